# shellcheck shell=bash
# Sourced by e2e/cluster and e2e/object-stores-check. Uses lib/common.sh (log, die, start_proc,
# stop_pid, proc_alive, pid_alive, wait_for, kc), lib/pki.sh (gen_ca, gen_cert), e2e/cluster's
# all_running (its cmd_ functions only) and COMPONENT_ENV, STATE, CACHE, NODE_IP; sourcing it sets
# the variables below from STATE and CACHE and runs nothing else.
#
# object stores: one S3 server per data center for backup tests. Garage (a production S3 store,
# built from crates.io; data on disk under $STATE, so it survives a restart) serves plain HTTP on
# loopback behind its own nginx-light doing TLS on the node address, so pods reach it and one
# data center can be stopped alone (its Garage and its front) and started again with its data.

OBJECT_STORES=(provincial-dc government-dc)
declare -A OS_ROLE=([provincial-dc]=ProvincialDataCenter [government-dc]=GovernmentDataCenter)
declare -A OS_BUCKET=([provincial-dc]=sectordb-provincial [government-dc]=sectordb-government)
declare -A OS_S3_PORT=([provincial-dc]=9401 [government-dc]=9402)    # Garage S3 API, 127.0.0.1, plain HTTP
declare -A OS_RPC_PORT=([provincial-dc]=9411 [government-dc]=9412)   # Garage RPC, 127.0.0.1
declare -A OS_TLS_PORT=([provincial-dc]=9443 [government-dc]=9444)   # nginx, $NODE_IP, TLS
OS_REGION=ap-southeast-1
OS_NAMESPACE=sectordb-system
OS_PY_REQS=("boto3==1.44.5")    # for tests and checks (e2e/src/backup.rs), not for the servers
OS_DIR="$STATE/object-stores"
OS_PYTHON=/usr/bin/python3      # Debian's, with python3-venv (scripts/setup-host)

# Garage, built with cargo from crates.io into a cache keyed by version and recipe. Only LMDB for
# metadata: no SQLite, metrics or K2V (they add build time and nothing the tests use).
# bundled-libs is required (main.rs refuses to build without it or system-libs); without SQLite
# it bundles nothing more (libsodium and zstd are built from source either way).
GARAGE_VERSION=2.5.0
GARAGE_FEATURES=bundled-libs,lmdb
GARAGE_RECIPE=1                 # bump when the build recipe (features, flags) changes
GARAGE_HOME="$CACHE/garage-$GARAGE_VERSION"
GARAGE_ROOT="$GARAGE_HOME/recipe-$GARAGE_RECIPE"   # cargo install --root
GARAGE="$GARAGE_ROOT/bin/garage"
GARAGE_BUILD_WAIT=7200          # at most this long (s) for another big build to end first

os_valid_name() { [ -n "${OS_ROLE[$1]:-}" ] || die "unknown object store '$1' (known: ${OBJECT_STORES[*]})"; }

# Sets OS_VENV to the venv with boto3 under the cache, installing it on a miss.
ensure_os_venv() {
  [ -x "$OS_PYTHON" ] || die "$OS_PYTHON missing (run scripts/setup-host)"
  local key
  key="$( ( printf '%s\n' "${OS_PY_REQS[@]}"; "$OS_PYTHON" -c 'import sys; print(sys.version)' ) | sha256sum | cut -c1-12)"
  OS_VENV="$CACHE/object-stores/venv-$key"
  [ -f "$OS_VENV/.complete" ] && return 0
  local t0; t0=$(date +%s)
  log "installing ${OS_PY_REQS[*]} into $OS_VENV (pip cache $CACHE/pip)"
  mkdir -p "$CACHE/object-stores"
  # Other versions' venvs (the moto one among them) are of no use any more.
  find "$CACHE/object-stores" -mindepth 1 -maxdepth 1 -name 'venv-*' ! -name "venv-$key" -exec rm -rf {} +
  rm -rf "$OS_VENV"
  "$OS_PYTHON" -m venv "$OS_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed? run scripts/setup-host)"
  PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$OS_VENV/bin/pip" install -q "${OS_PY_REQS[@]}" >&2 || die "pip install ${OS_PY_REQS[*]} failed"
  touch "$OS_VENV/.complete"
  log "installed boto3 in $(( $(date +%s) - t0 ))s"
}

# PIDs of big builds running now (e2e/build-kubernetes, any go command, any rustc), except this
# process's own ancestors.
os_other_builds() {
  local p mine=" " q=$$
  while [ -n "$q" ] && [ "$q" != 0 ]; do
    mine="$mine$q "
    q="$( (awk '/^PPid:/ {print $2}' "/proc/$q/status") 2>/dev/null)" || break
  done
  for p in $( (pgrep -x go; pgrep -x rustc; pgrep -f '(^|/)build-kubernetes( |$)') || true); do
    [[ "$mine" == *" $p "* ]] || echo "$p"
  done
}

# Builds Garage into the cache unless it is there. The machine has 2 cores: the build (about
# 13 min cold, see docs/e2e.md) waits until no other big build runs, and runs at nice 19.
ensure_garage() {
  [ -x "$GARAGE" ] && [ -f "$GARAGE_ROOT/.complete" ] && return 0
  local cargo waited=0 busy t0 target="$GARAGE_HOME/target"
  cargo="$(command -v cargo || echo "$HOME/.cargo/bin/cargo")"
  [ -x "$cargo" ] || die "cargo missing: Garage is built from crates.io (install Rust with rustup)"
  mkdir -p "$GARAGE_HOME"
  exec 8>>"$GARAGE_HOME/.build.lock"   # one build at a time, whoever asks (the check, the harness)
  flock 8
  if [ -x "$GARAGE" ] && [ -f "$GARAGE_ROOT/.complete" ]; then exec 8>&-; return 0; fi
  while busy="$(os_other_builds)" && [ -n "$busy" ]; do
    [ "$waited" -ge "$GARAGE_BUILD_WAIT" ] && { log "WARNING: still another build (${busy//$'\n'/ }); building Garage anyway"; break; }
    [ $((waited % 300)) = 0 ] && log "waiting for another build to end before building Garage (PIDs ${busy//$'\n'/ })"
    sleep 30; waited=$((waited + 30))
  done
  # Other versions' and recipes' builds are of no use any more.
  find "$CACHE" -mindepth 1 -maxdepth 1 -name 'garage-*' ! -name "garage-$GARAGE_VERSION" -exec rm -rf {} +
  find "$GARAGE_HOME" -mindepth 1 -maxdepth 1 -name 'recipe-*' ! -name "recipe-$GARAGE_RECIPE" -exec rm -rf {} +
  rm -rf "$GARAGE_ROOT"
  t0=$(date +%s)
  log "building Garage $GARAGE_VERSION from crates.io (features $GARAGE_FEATURES) into $GARAGE_ROOT; log $GARAGE_HOME/build.log"
  if ! CARGO_TARGET_DIR="$target" nice -n 19 "$cargo" install garage --locked --version "=$GARAGE_VERSION" \
      --no-default-features --features "$GARAGE_FEATURES" --root "$GARAGE_ROOT" >"$GARAGE_HOME/build.log" 2>&1; then
    tail -30 "$GARAGE_HOME/build.log" >&2
    die "building Garage failed (log: $GARAGE_HOME/build.log)"
  fi
  rm -rf "$target"   # about 2 GB; a new version or recipe builds afresh anyway
  "$GARAGE" --version >/dev/null 2>&1 || die "$GARAGE does not run"
  touch "$GARAGE_ROOT/.complete"
  exec 8>&-
  log "built Garage $GARAGE_VERSION in $(( $(date +%s) - t0 ))s ($(du -h "$GARAGE" | cut -f1))"
}

# CA (once per cluster state) and one server certificate per store. pgBackRest ignores IP SANs,
# so the node address is in the SAN both as IP and as DNS name.
ensure_os_pki() {
  local d="$STATE/pki" n
  mkdir -p "$d"; chmod 0700 "$d"
  if [ ! -s "$d/object-store-ca.crt" ] || [ ! -s "$d/object-store-ca.key" ]; then
    log "issuing the object-store CA"
    gen_ca object-store-ca sectordb-object-store-ca
    rm -f "$d"/object-store-*-dc.crt
  fi
  for n in "${OBJECT_STORES[@]}"; do
    [ -s "$d/object-store-$n.crt" ] && [ -s "$d/object-store-$n.key" ] && continue
    log "issuing the TLS certificate of object store $n"
    gen_cert "object-store-$n" "/CN=sectordb-$n-s3" server "IP:$NODE_IP,DNS:$NODE_IP" object-store-ca
  done
}

# Access keys, generated once per cluster state in Garage's own format (GK + 24 hex digits, a
# secret of 64 hex digits); Garage checks every request's signature against them. A key of
# another format (moto's days) is replaced.
ensure_os_credentials() { # NAME
  local f="$OS_DIR/$1/credentials"
  if grep -qE '^AWS_ACCESS_KEY_ID=GK[0-9a-f]{24}$' "$f" 2>/dev/null \
      && grep -qE '^AWS_SECRET_ACCESS_KEY=[0-9a-f]{64}$' "$f"; then
    return 0
  fi
  [ -s "$f" ] && log "replacing the access key of $1 (not in Garage's format)"
  mkdir -p "$OS_DIR/$1"
  ( umask 077
    printf 'AWS_ACCESS_KEY_ID=GK%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$(openssl rand -hex 12)" "$(openssl rand -hex 32)" >"$f.partial" )
  mv "$f.partial" "$f"
}
os_key() { sed -n "s/^$2=//p" "$OS_DIR/$1/credentials"; } # NAME VAR

port_listening() { ss -ltnH "sport = :$1" | grep -q .; } # PORT (any address)
front_refused() { ! port_listening "${OS_TLS_PORT[$1]}"; }

# ---------------------------------------------------------------------------------------------
# Garage: one single-node cluster per data center, everything under $OS_DIR/NAME/garage.

garage_cli() { # NAME ARGS... (talks to the running server over its RPC port; 30 s at most)
  local n="$1"; shift
  timeout 30 "${COMPONENT_ENV[@]}" RUST_LOG=warn "$GARAGE" -c "$OS_DIR/$n/garage/garage.toml" "$@"
}

write_garage_conf() { # NAME FILE
  local n="$1" g="$OS_DIR/$1/garage"
  cat >"$2" <<EOF
# Written by sectordb e2e/cluster: Garage $GARAGE_VERSION of object store $n, a single node.
metadata_dir = "$g/meta"
data_dir = "$g/data"
db_engine = "lmdb"
replication_factor = 1
# Backups come compressed and encrypted: zstd would cost CPU for nothing.
compression_level = "none"
# No background scrub reading every block on a 2-core test machine.
disable_scrub = true
rpc_bind_addr = "127.0.0.1:${OS_RPC_PORT[$n]}"
rpc_public_addr = "127.0.0.1:${OS_RPC_PORT[$n]}"
rpc_secret_file = "$g/rpc_secret"
# Alone: no peers, no discovery. No admin API (the CLI talks RPC), no web or K2V endpoint.
bootstrap_peers = []

[s3_api]
s3_region = "$OS_REGION"
api_bind_addr = "127.0.0.1:${OS_S3_PORT[$n]}"
EOF
}

# A running Garage of this store from the current binary.
garage_running() { # NAME
  pid_alive "garage-$1" || return 1
  tr '\0' ' ' <"/proc/$(cat "$STATE/pids/garage-$1.pid")/cmdline" 2>/dev/null | grep -qF "$GARAGE -c "
}

garage_up() { # NAME: serving S3 and answering the CLI
  port_listening "${OS_S3_PORT[$1]}" && garage_cli "$1" status >/dev/null 2>&1
}

stop_garage() { # NAME
  local n="$1" f="$STATE/pids/garage-$1.pid"
  [ -f "$f" ] && stop_pid "garage-$n" "$(cat "$f")"
  rm -f "$f"
}

start_garage() { # NAME (its configuration written, its secret made)
  local n="$1" p
  stop_garage "$n"
  for p in "${OS_S3_PORT[$n]}" "${OS_RPC_PORT[$n]}"; do
    ! port_listening "$p" || die "port 127.0.0.1:$p (Garage of $n) is taken by a process not recorded in $STATE/pids"
  done
  start_proc "garage-$n" "$GARAGE" -c "$OS_DIR/$n/garage/garage.toml" server
}

# Start (or restart, when its binary or configuration changed) the Garage of one store; do not
# wait for it (see garage_ready).
ensure_garage_running() { # NAME
  local n="$1" g="$OS_DIR/$1/garage"
  mkdir -p "$g/meta" "$g/data"; chmod 0700 "$g"
  if [ ! -s "$g/rpc_secret" ]; then
    ( umask 077; openssl rand -hex 32 >"$g/rpc_secret.partial" ); mv "$g/rpc_secret.partial" "$g/rpc_secret"
  fi
  write_garage_conf "$n" "$g/garage.toml.new"
  if garage_running "$n" && cmp -s "$g/garage.toml.new" "$g/garage.toml"; then
    rm -f "$g/garage.toml.new"; return 0
  fi
  garage_running "$n" && log "binary or configuration of the Garage of $n changed; restarting it"
  mv "$g/garage.toml.new" "$g/garage.toml"
  start_garage "$n"
}

# Wait for a started Garage, then give it what it lacks: its layout (the node with the whole
# capacity, version 1), the store's access key, the bucket, the key's rights on the bucket. Done
# once per data directory (the file `ready` records the key it was done for).
garage_ready() { # NAME
  local n="$1" g="$OS_DIR/$1/garage" id key
  if ! wait_for 30 "Garage of $n on 127.0.0.1:${OS_S3_PORT[$n]}" garage_up "$n" || ! pid_alive "garage-$n"; then
    tail -20 "$STATE/logs/garage-$n.log" >&2; die "Garage of $n did not start (log: $STATE/logs/garage-$n.log)"
  fi
  key="$(os_key "$n" AWS_ACCESS_KEY_ID)"
  [ "$(cat "$g/ready" 2>/dev/null)" = "$key" ] && return 0
  if [ "$(garage_cli "$n" json-api GetClusterLayout \
        | "$OS_VENV/bin/python" -c 'import json, sys; print(len(json.load(sys.stdin)["roles"]))')" = 0 ]; then
    id="$(garage_cli "$n" node id -q 2>/dev/null)"; id="${id%%@*}"
    [ -n "$id" ] || die "garage node id of $n gave nothing"
    log "giving the Garage of $n its layout (node ${id:0:16}, zone $n)"
    garage_cli "$n" layout assign -z "$n" -c 10GB "$id" >/dev/null || die "garage layout assign on $n failed"
    garage_cli "$n" layout apply --version 1 >/dev/null || die "garage layout apply on $n failed"
  fi
  wait_for 30 "Garage of $n healthy" garage_cli "$n" health -q || die "Garage of $n not healthy after its layout"
  if ! garage_cli "$n" json-api GetKeyInfo "{\"id\":\"$key\"}" >/dev/null 2>&1; then
    log "importing the access key $key into the Garage of $n"
    # From stdin, so the secret stays off every command line (both are hex: no JSON escaping).
    printf '{"accessKeyId":"%s","secretAccessKey":"%s","name":"sectordb-e2e-%s"}' \
        "$key" "$(os_key "$n" AWS_SECRET_ACCESS_KEY)" "$n" \
      | garage_cli "$n" json-api ImportKey - >/dev/null || die "importing the access key into the Garage of $n failed"
  fi
  if ! garage_cli "$n" bucket info "${OS_BUCKET[$n]}" >/dev/null 2>&1; then
    log "creating bucket ${OS_BUCKET[$n]} on $n"
    garage_cli "$n" bucket create "${OS_BUCKET[$n]}" >/dev/null || die "creating bucket ${OS_BUCKET[$n]} on $n failed"
  fi
  garage_cli "$n" bucket allow --read --write --owner "${OS_BUCKET[$n]}" --key "$key" >/dev/null \
    || die "garage bucket allow on $n failed"
  echo "$key" >"$g/ready"
}

# ---------------------------------------------------------------------------------------------
# nginx: the TLS front of one store on the node address.

write_nginx_conf() { # NAME FILE
  local n="$1" d="$OS_DIR/$1"
  cat >"$2" <<EOF
# Written by sectordb e2e/cluster: TLS front of object store $n (Garage on 127.0.0.1:${OS_S3_PORT[$n]}).
daemon off;
master_process on;
worker_processes 1;
user www-data;
pid $d/nginx.pid;
error_log stderr notice;
events { worker_connections 512; }
http {
  access_log $STATE/logs/nginx-$n.access.log;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen $NODE_IP:${OS_TLS_PORT[$n]} ssl;
    ssl_certificate $STATE/pki/object-store-$n.crt;
    ssl_certificate_key $STATE/pki/object-store-$n.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    # Stream request and response bodies both ways, any size (backup-notes: without these,
    # pgBackRest uploads are buffered to disk or refused). The Host header goes through as the
    # client signed it: Garage checks the signature, Host included.
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Host \$http_host;
    proxy_set_header Connection "";
    proxy_connect_timeout 5s;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    location / { proxy_pass http://127.0.0.1:${OS_S3_PORT[$n]}; }
  }
}
EOF
}

stop_front() { # NAME
  local n="$1" f="$STATE/pids/nginx-$1.pid"
  [ -f "$f" ] && stop_pid "nginx-$n" "$(cat "$f")"
  rm -f "$f"
  wait_for 10 "port ${OS_TLS_PORT[$n]} closed" front_refused "$n" || die "port $NODE_IP:${OS_TLS_PORT[$n]} still listening"
}

# Start (or restart, when its configuration changed) the TLS front of one store.
ensure_front() { # NAME
  local n="$1" d="$OS_DIR/$1"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || die "nginx missing (run scripts/setup-host: it installs nginx-light)"
  mkdir -p "$d/tmp"
  write_nginx_conf "$n" "$d/nginx.conf.new"
  if pid_alive "nginx-$n" && cmp -s "$d/nginx.conf.new" "$d/nginx.conf"; then
    rm -f "$d/nginx.conf.new"; return 0
  fi
  pid_alive "nginx-$n" && { log "configuration of the $n front changed; restarting it"; stop_front "$n"; }
  mv "$d/nginx.conf.new" "$d/nginx.conf"
  if ! front_refused "$n"; then
    die "port $NODE_IP:${OS_TLS_PORT[$n]} (TLS front of $n) is taken by a process not recorded in $STATE/pids"
  fi
  /usr/sbin/nginx -t -q -e stderr -c "$d/nginx.conf" >&2 || die "nginx configuration of $n rejected ($d/nginx.conf)"
  start_proc "nginx-$n" /usr/sbin/nginx -e stderr -c "$d/nginx.conf"
  wait_for 10 "TLS front of $n on $NODE_IP:${OS_TLS_PORT[$n]}" port_listening "${OS_TLS_PORT[$n]}" \
    || die "nginx of $n not listening (log: $STATE/logs/nginx-$n.log)"
}

# ---------------------------------------------------------------------------------------------
# Secrets and the JSON contract (read by e2e/src/backup.rs, e2e/cluster-check and e2e/bench).

# Namespace + per store a credentials Secret and a CA Secret, applied in one go (idempotent).
apply_os_secrets() {
  local n ca; ca="$(base64 -w0 "$STATE/pki/object-store-ca.crt")"
  {
    printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$OS_NAMESPACE"
    for n in "${OBJECT_STORES[@]}"; do
      printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s3-%s\n  namespace: %s\n  labels: {app.kubernetes.io/managed-by: sectordb-e2e-cluster}\ntype: Opaque\ndata:\n  AWS_ACCESS_KEY_ID: %s\n  AWS_SECRET_ACCESS_KEY: %s\n' \
        "$n" "$OS_NAMESPACE" "$(os_key "$n" AWS_ACCESS_KEY_ID | tr -d '\n' | base64 -w0)" \
        "$(os_key "$n" AWS_SECRET_ACCESS_KEY | tr -d '\n' | base64 -w0)"
      printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s3-%s-ca\n  namespace: %s\n  labels: {app.kubernetes.io/managed-by: sectordb-e2e-cluster}\ntype: Opaque\ndata:\n  ca.crt: %s\n' \
        "$n" "$OS_NAMESPACE" "$ca"
    done
  } | kc apply -f - >/dev/null || die "kubectl apply of the object-store Secrets failed"
}

os_json() { # NAME
  local n="$1"
  printf '{"name":"%s","role":"%s","endpoint":"https://%s:%s","bucket":"%s","region":"%s","credentialsSecret":"s3-%s","caSecret":"s3-%s-ca"}\n' \
    "$n" "${OS_ROLE[$n]}" "$NODE_IP" "${OS_TLS_PORT[$n]}" "${OS_BUCKET[$n]}" "$OS_REGION" "$n" "$n"
}

# Everything for the given stores, except the Secrets: venv, Garage binary, PKI, keys, Garage
# servers (layout, key, bucket), fronts.
ensure_object_stores() { # NAMES...
  local n
  ensure_os_venv
  ensure_garage
  mkdir -p "$OS_DIR" "$STATE/logs" "$STATE/pids"
  # Python with boto3, for checks and tests (a wrapper: a symlink would not find the venv).
  printf '#!/bin/sh\nexec %s "$@"\n' "$OS_VENV/bin/python" >"$OS_DIR/python.new"
  chmod 0755 "$OS_DIR/python.new"; mv -f "$OS_DIR/python.new" "$OS_DIR/python"
  ensure_os_pki
  for n in "$@"; do
    ensure_os_credentials "$n"
    ensure_garage_running "$n"   # the servers start side by side; garage_ready waits
  done
  for n in "$@"; do garage_ready "$n"; done
  for n in "$@"; do ensure_front "$n"; done
}

cmd_object_stores() {
  local t0; t0=$(date +%s%N)
  all_running || die "cluster is not up (run e2e/cluster up)"
  {
    ensure_object_stores "${OBJECT_STORES[@]}"
    apply_os_secrets
  } >&2
  log "object stores ready ($(( ($(date +%s%N) - t0) / 1000000 ))ms)"
  local n; for n in "${OBJECT_STORES[@]}"; do os_json "$n"; done
}

# Stop one data center for real: its front (so clients get connection refused at once), then its
# Garage. The data stay on disk for object-store-start.
stop_object_store() { # NAME
  local n="$1"
  stop_front "$n"
  stop_garage "$n"
  wait_for 10 "Garage of $n gone from its ports" bash -c "! ss -ltnH '( sport = :${OS_S3_PORT[$n]} or sport = :${OS_RPC_PORT[$n]} )' | grep -q ." \
    || die "ports 127.0.0.1:${OS_S3_PORT[$n]}/${OS_RPC_PORT[$n]} of $n still listening"
}

cmd_object_store_stop() { # NAME
  os_valid_name "$1"
  [ -f "$STATE/pids/nginx-$1.pid" ] || [ -f "$STATE/pids/garage-$1.pid" ] || log "object store $1 was not running"
  stop_object_store "$1"
  log "object store $1 stopped: $NODE_IP:${OS_TLS_PORT[$1]} refuses connections (its data stay on disk)"
}

cmd_object_store_start() { # NAME
  os_valid_name "$1"
  all_running || die "cluster is not up (run e2e/cluster up)"
  ensure_object_stores "$1" >&2
  log "object store $1 serving on https://$NODE_IP:${OS_TLS_PORT[$1]}"
}

# Stop every front and Garage (by recorded PID, then any leftover of ours), remove their runtime
# files. Keeps the data, the CA, the keys, the venv and the binary; the Secrets stay (they are
# still right). `down` calls it before it removes $STATE (and so the data) as a whole.
stop_object_stores() {
  local n p c
  for n in "${OBJECT_STORES[@]}"; do
    [ -f "$STATE/pids/nginx-$n.pid" ] && stop_pid "nginx-$n" "$(cat "$STATE/pids/nginx-$n.pid")"
    rm -f "$STATE/pids/nginx-$n.pid"
  done
  for n in "${OBJECT_STORES[@]}"; do stop_garage "$n"; done
  # Leftovers: an nginx master running one of our configurations, a Garage server of ours (any
  # cached version, or any binary, running a configuration under $OS_DIR), a moto from an
  # older harness's venv.
  for p in /proc/[0-9]*; do
    c="$( (tr '\0' ' ' <"$p/cmdline") 2>/dev/null)" || continue
    case "$c" in
      "nginx: master process"*"-c $OS_DIR/"*|*"garage -c $OS_DIR/"*" server "*|"$CACHE/object-stores/venv-"*"/bin/python -m moto.server "*)
        log "killing leftover ${c:0:100} (${p#/proc/})"; kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
    esac
  done
  rm -rf "$OS_DIR"/*/tmp "$OS_DIR"/*/nginx.conf "$OS_DIR"/*/nginx.pid 2>/dev/null || true
  for n in "${OBJECT_STORES[@]}"; do
    rm -f "$STATE/logs/garage-$n.log" "$STATE/logs/nginx-$n.log" "$STATE/logs/nginx-$n.access.log" \
      "$STATE/logs/moto-$n.log" "$STATE/pids/moto-$n.pid"
  done
  return 0
}

# Both data centers stopped and their data removed (the next object-stores starts empty ones
# with the same keys).
cmd_object_stores_down() {
  [ -d "$OS_DIR" ] || { log "no object stores"; return 0; }
  stop_object_stores
  local n
  for n in "${OBJECT_STORES[@]}"; do rm -rf "$OS_DIR/$n/garage"; done
  log "object stores stopped and their data removed (CA and keys kept)"
}
