# shellcheck shell=bash
# Sourced by e2e/cluster: what the cluster runs, installed or built. Debian packages (PACKAGES,
# apt_update_once, debian_mirror, ensure_packages), the Kubernetes, etcd, CoreDNS, kube-router
# and local-path-provisioner binaries from e2e/build-kubernetes (ensure_binaries, which sets
# KUBE_BIN, ETCD_BIN, COREDNS_BIN, ROUTER_BIN and LPP_BIN) and the static pause binary
# (ensure_pause, which sets PAUSE_BIN). Expects lib/common.sh (log, die) and HERE, CACHE,
# PACKAGES and K8S_VERSION; sourcing it only sets apt_updated.

apt_updated=0
apt_update_once() {
  [ "$apt_updated" = 1 ] && return 0
  log "apt-get update"
  apt-get update -q >&2 || die "apt-get update failed"
  apt_updated=1
}

# The Debian mirror named by the machine's apt sources (first bookworm main entry).
debian_mirror() {
  local f uri=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk 'BEGIN{RS="";FS="\n"} /Suites:[^\n]*bookworm( |\n|$)/ && /Types:[^\n]*deb/ {
        for(i=1;i<=NF;i++) if ($i ~ /^URIs:/) { sub(/^URIs:[ \t]*/,"",$i); split($i,a," "); print a[1]; exit } }' "$f")"
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  echo "$uri"
}

ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  apt_update_once
  log "installing: ${missing[*]}"
  # No packaged daemon (containerd, nginx on port 80) may start: refuse service starts for the
  # install unless a policy-rc.d already does.
  local policy=/usr/sbin/policy-rc.d made=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# sectordb e2e/cluster: no service starts during its install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"; made=1
  fi
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { [ "$made" = 1 ] && rm -f "$policy"; die "apt-get install failed"; }
  [ "$made" = 1 ] && rm -f "$policy"
  return 0
}

# Sets KUBE_BIN, ETCD_BIN, COREDNS_BIN, ROUTER_BIN, LPP_BIN (building what is missing) and
# PAUSE_BIN.
# shellcheck disable=SC2034 # the *_BIN variables are for e2e/cluster and lib/images.sh
ensure_binaries() {
  local b="$HERE/build-kubernetes"
  KUBE_BIN="$("$b" kubernetes "$K8S_VERSION")" || die "building Kubernetes failed"
  ETCD_BIN="$("$b" etcd)" || die "building etcd failed"
  COREDNS_BIN="$("$b" coredns)" || die "building CoreDNS failed"
  ROUTER_BIN="$("$b" kube-router)" || die "building kube-router failed"
  LPP_BIN="$("$b" local-path-provisioner)" || die "building local-path-provisioner failed"
  ensure_pause
}

# The pause binary, built statically from the pause.c of the Kubernetes module being run.
ensure_pause() {
  local ver; ver="$(sed -n 's/^version=//p' "$(dirname "$KUBE_BIN")/build-info")"
  local src="$CACHE/go/pkg/mod/k8s.io/kubernetes@$ver/build/pause"
  PAUSE_BIN="$(dirname "$KUBE_BIN")/pause"
  [ -x "$PAUSE_BIN/pause" ] && [ -s "$PAUSE_BIN/pause.tag" ] && return 0
  [ -f "$src/linux/pause.c" ] || die "no pause.c in $src"
  mkdir -p "$PAUSE_BIN"
  gcc -Os -static -Wall -Werror -DVERSION="$ver" -o "$PAUSE_BIN/pause.partial" "$src/linux/pause.c" \
    || die "building pause failed"
  strip "$PAUSE_BIN/pause.partial" 2>/dev/null || true
  mv "$PAUSE_BIN/pause.partial" "$PAUSE_BIN/pause"
  local tag; tag="$(sed -n 's/^TAG ?= *//p; s/^TAG = *//p' "$src/Makefile" | head -1)"
  echo "${tag:-3.10}" >"$PAUSE_BIN/pause.tag"
}
