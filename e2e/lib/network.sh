# shellcheck shell=bash
# Sourced by e2e/cluster: the network. The bridge with the host address, one namespace per node
# with a veth into the bridge, the routes between the nodes' pod subnets, the sysctls (their old
# values recorded first), the guard chains that drop cluster traffic on any other interface
# (setup_host_network, setup_node_network, record_sysctl), and taking all of it down again
# (teardown_network, remove_kube_iptables). Expects lib/common.sh (log, node_ns, node_veth,
# in_node) and e2e/cluster's addresses (BRIDGE, HOST_IP, NODE_NET, NODES, NODE_ADDR, NODE_PODS,
# CLUSTER_CIDR, SVC_CIDR, GUARD_OUT, GUARD_IN) and STATE. Sourcing it runs nothing.

record_sysctl() { # KEY: remember the value before we change it, once
  [ -f "$STATE/sysctl.$1" ] || sysctl -n "$1" >"$STATE/sysctl.$1" 2>/dev/null || true
}

setup_host_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE with host address $HOST_IP"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$HOST_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Safety net 1: the service CIDR routes into the bridge, never out of the default route, even
  # for a ClusterIP that kube-proxy has no rule for.
  ip route replace "$SVC_CIDR" dev "$BRIDGE" src "$HOST_IP"
  record_sysctl net.ipv4.conf.all.route_localnet
  record_sysctl net.bridge.bridge-nf-call-iptables
  # Bridged traffic between nodes passes the host's iptables, so the guard below sees it too.
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1

  # Safety net 2: two mangle chains of our own, first in POSTROUTING and PREROUTING. Traffic of
  # the cluster's ranges (pods, services, node addresses) may only use loopback and the bridge
  # (and its ports); on any other interface (the real one) it is dropped, in both directions.
  local c i r
  for c in "$GUARD_OUT" "$GUARD_IN"; do
    iptables -t mangle -nL "$c" >/dev/null 2>&1 || iptables -t mangle -N "$c"
    iptables -t mangle -F "$c"
  done
  for i in lo "$BRIDGE" sdb-h+; do
    iptables -t mangle -A "$GUARD_OUT" -o "$i" -j RETURN
    iptables -t mangle -A "$GUARD_IN" -i "$i" -j RETURN
  done
  for r in "$CLUSTER_CIDR" "$NODE_NET" "$SVC_CIDR"; do
    iptables -t mangle -A "$GUARD_OUT" -s "$r" -j DROP
    iptables -t mangle -A "$GUARD_OUT" -d "$r" -j DROP
    iptables -t mangle -A "$GUARD_IN" -s "$r" -j DROP
    iptables -t mangle -A "$GUARD_IN" -d "$r" -j DROP
  done
  iptables -t mangle -C POSTROUTING -j "$GUARD_OUT" 2>/dev/null || iptables -t mangle -I POSTROUTING 1 -j "$GUARD_OUT"
  iptables -t mangle -C PREROUTING -j "$GUARD_IN" 2>/dev/null || iptables -t mangle -I PREROUTING 1 -j "$GUARD_IN"
}

# A node: its namespace (no default route: nothing in it can reach outside the cluster's
# ranges), a veth into the bridge, routes to the other nodes' pod subnets.
setup_node_network() { # NODE
  local node="$1" ns veth addr other
  ns="$(node_ns "$node")"; veth="$(node_veth "$node")"; addr="${NODE_ADDR[$node]}"
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip link add "$veth" type veth peer name "$veth-n"
    ip link set "$veth-n" netns "$ns"
    ip -n "$ns" link set "$veth-n" name eth0
  fi
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr replace "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace "$SVC_CIDR" dev eth0 src "$addr"
  for other in "${NODES[@]}"; do
    [ "$other" = "$node" ] && continue
    ip -n "$ns" route replace "${NODE_PODS[$other]}" via "${NODE_ADDR[$other]}" dev eth0
  done
  ip route replace "${NODE_PODS[$node]}" via "$addr" dev "$BRIDGE"
  in_node "$node" sysctl -qw net.ipv4.ip_forward=1
  # Pods of one node share its CNI bridge: without this, kube-proxy and kube-router never see
  # their traffic to each other.
  in_node "$node" sysctl -qw net.bridge.bridge-nf-call-iptables=1
}

# Everything setup_host_network and setup_node_network made, and the host's KUBE-* chains that
# the kube-proxies left; the sysctls get their old values back. Goes on past errors (down runs it
# under set +e).
teardown_network() {
  local node k
  # A node's namespace takes its iptables rules, its CNI bridge and the pods' veths with it.
  for node in "${NODES[@]}"; do
    ip link del "$(node_veth "$node")" 2>/dev/null
    ip netns del "$(node_ns "$node")" 2>/dev/null
    ip route del "${NODE_PODS[$node]}" 2>/dev/null
  done
  ip route del "$SVC_CIDR" 2>/dev/null
  ip link del "$BRIDGE" 2>/dev/null
  log "network namespaces and interfaces removed; removing the host's KUBE-* chains and the guard"
  remove_kube_iptables

  for k in net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables; do
    [ -f "$STATE/sysctl.$k" ] && sysctl -qw "$k=$(cat "$STATE/sysctl.$k")" 2>/dev/null
  done
  return 0
}

remove_kube_iptables() {
  local t table line chain
  for t in iptables ip6tables; do
    command -v "$t-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$t" -t "$table" -nL >/dev/null 2>&1 || continue
      # Rules in any chain that jump to a KUBE-/CNI-/our guard chain: delete them.
      while read -r line; do
        eval "$t -t $table ${line/#-A /-D }" 2>/dev/null || true
      done < <("$t-save" -t "$table" 2>/dev/null | grep -E '^-A ' | grep -E -- "-j (KUBE-|CNI-|SDB-GUARD)" | grep -vE '^-A (KUBE-|CNI-)' || true)
      local chains; chains="$("$t-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\|CNI-[^ ]*\|SDB-GUARD[^ ]*\) .*/\1/p')"
      for chain in $chains; do "$t" -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$t" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}
