# shellcheck shell=bash
# The helpers every part of the harness uses, sourced by e2e/cluster and e2e/object-stores-check:
# messages (log, die, need_root), node names (node_valid, node_ns, node_veth, node_dir,
# node_sock), waiting (wait_for), starting, watching and stopping processes (start_proc,
# start_on, in_node, proc_alive, pid_alive, stop_pid), talking to the cluster (kubectl_bin, kc,
# ctr_on, api_curl, api_ready) and filling in e2e/templates (render). Function definitions only:
# sourcing it runs nothing and reads no variable. Called, they expect what e2e/cluster defines,
# as far as each needs it: HERE, STATE (with logs/ and pids/ in it), COMPONENT_ENV, NODES,
# NODE_ADDR, HOST_IP, and KUBE_BIN or $STATE/kube-bin.

log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

node_valid() { [ -n "${NODE_ADDR[$1]:-}" ] || die "unknown node '$1' (nodes: ${NODES[*]})"; }
node_ns() { echo "sdb-${1#sectordb-}"; }          # network namespace of a node
node_veth() { echo "sdb-h${1#sectordb-}"; }       # its veth's host end, in the bridge
node_dir() { echo "$STATE/nodes/$1"; }

# wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds or time runs out.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out after ${timeout}s waiting for $what"; return 1; fi
    sleep 0.5
  done
}

# start_proc NAME CMD...: start CMD in its own session, log to logs/NAME.log, PID to pids/NAME.pid
start_proc() {
  local name="$1"; shift
  log "starting $name"
  # 9>&-: the component must not inherit (and so hold) the command lock.
  setsid "${COMPONENT_ENV[@]}" "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid" >"$STATE/pids/$name.pid"
  grep -qx "$name" "$STATE/pids/order" 2>/dev/null || echo "$name" >>"$STATE/pids/order"
  sleep 0.2
  kill -0 "$pid" 2>/dev/null || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited at once"; }
}

# start_on NODE NAME CMD...: start_proc inside the node's network namespace (only the network:
# the mount namespace stays the host's, so kubelet's mounts are the ones containerd sees).
start_on() {
  local node="$1" name="$2"; shift 2
  start_proc "$name" nsenter --net="/run/netns/$(node_ns "$node")" -- "$@"
}
in_node() { local node="$1"; shift; nsenter --net="/run/netns/$(node_ns "$node")" -- "$@"; }

# Alive and not a zombie (our components are reparented to PID 1, which may reap them late).
proc_alive() { local st; st="$( (awk '{print $3}' "/proc/$1/stat") 2>/dev/null)" || return 1; [ -n "$st" ] && [ "$st" != Z ]; }
pid_alive() { local f="$STATE/pids/$1.pid"; [ -f "$f" ] && proc_alive "$(cat "$f")"; }

kubectl_bin() { echo "${KUBE_BIN:-$(cat "$STATE/kube-bin" 2>/dev/null)}/kubectl"; }
kc() { "$(kubectl_bin)" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }
node_sock() { echo "$(node_dir "$1")/containerd/containerd.sock"; }
ctr_on() { local node="$1"; shift; ctr --address "$(node_sock "$node")" -n k8s.io "$@"; }
api_curl() {
  curl -sS --noproxy '*' --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" \
    --key "$STATE/pki/admin.key" "https://$HOST_IP:6443$1"
}
api_ready() { [ "$(api_curl /readyz 2>/dev/null)" = ok ]; }

stop_pid() { # NAME PID
  local name="$1" pid="$2" t0
  proc_alive "$pid" || return 0
  t0=$(date +%s%N)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    proc_alive "$pid" || { log "stopped $name ($(( ($(date +%s%N) - t0) / 1000000 ))ms)"; return 0; }
    sleep 0.1
  done
  log "$name ($pid) did not stop in 10s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do proc_alive "$pid" || return 0; sleep 0.1; done
  log "WARNING: $name ($pid) still alive"
}

# render TEMPLATE NAME=VALUE...: e2e/templates/TEMPLATE on stdout, each ${NAME} in it replaced by
# its VALUE and nothing else touched (envsubst, told the names). The values reach envsubst in its
# environment, never on a command line (kubeconfigs carry private keys). A ${NAME} in the
# template that is not given is an error, not left in the file.
render() {
  local tpl="$HERE/templates/$1" names=() a; shift
  for a in "$@"; do names+=("\${${a%%=*}}"); done
  local unknown
  # shellcheck disable=SC2016 # the pattern is the literal text ${NAME}
  unknown="$(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$tpl" | sort -u | grep -vxF -e "" "${names[@]/#/-e}" || true)"
  [ -z "$unknown" ] || die "template $tpl uses ${unknown//$'\n'/ }, which render was not given"
  ( for a in "$@"; do export "${a?}"; done; envsubst "${names[*]}" <"$tpl" )
}
