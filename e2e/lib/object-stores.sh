# Sourced by e2e/cluster (uses its helpers: log, die, start_proc, stop_pid, pid_alive, wait_for, kc,
# gen_ca, gen_cert, COMPONENT_ENV, STATE, CACHE, NODE_IP).
#
# object stores: one S3 server per data center for backup tests. moto (in memory, plain HTTP on
# loopback) behind its own nginx-light doing TLS on the node address, so pods reach it and one
# data center can be cut off alone (stop its nginx; moto and its data stay).

OBJECT_STORES=(provincial-dc government-dc)
declare -A OS_ROLE=([provincial-dc]=ProvincialDataCenter [government-dc]=GovernmentDataCenter)
declare -A OS_BUCKET=([provincial-dc]=sectordb-provincial [government-dc]=sectordb-government)
declare -A OS_MOTO_PORT=([provincial-dc]=9401 [government-dc]=9402)   # 127.0.0.1, plain HTTP
declare -A OS_TLS_PORT=([provincial-dc]=9443 [government-dc]=9444)    # $NODE_IP, TLS
OS_REGION=ap-southeast-1
OS_NAMESPACE=sectordb-system
OS_PY_REQS=("moto[server]==5.2.5" "boto3==1.44.5")
OS_DIR="$STATE/object-stores"
OS_PYTHON=/usr/bin/python3      # Debian's, with python3-venv (scripts/setup-host)

os_valid_name() { [ -n "${OS_ROLE[$1]:-}" ] || die "unknown object store '$1' (known: ${OBJECT_STORES[*]})"; }

# Sets OS_VENV to the venv with moto and boto3 under the cache, installing it on a miss.
ensure_os_venv() {
  [ -x "$OS_PYTHON" ] || die "$OS_PYTHON missing (run scripts/setup-host)"
  local key
  key="$( ( printf '%s\n' "${OS_PY_REQS[@]}"; "$OS_PYTHON" -c 'import sys; print(sys.version)' ) | sha256sum | cut -c1-12)"
  OS_VENV="$CACHE/object-stores/venv-$key"
  [ -f "$OS_VENV/.complete" ] && return 0
  local t0; t0=$(date +%s)
  log "installing ${OS_PY_REQS[*]} into $OS_VENV (pip cache $CACHE/pip)"
  mkdir -p "$CACHE/object-stores"
  # Other versions' venvs are of no use any more.
  find "$CACHE/object-stores" -mindepth 1 -maxdepth 1 -name 'venv-*' ! -name "venv-$key" -exec rm -rf {} +
  rm -rf "$OS_VENV"
  "$OS_PYTHON" -m venv "$OS_VENV" >&2 || die "python3 -m venv failed (is python3-venv installed? run scripts/setup-host)"
  PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$OS_VENV/bin/pip" install -q "${OS_PY_REQS[@]}" >&2 || die "pip install ${OS_PY_REQS[*]} failed"
  touch "$OS_VENV/.complete"
  log "installed moto and boto3 in $(( $(date +%s) - t0 ))s"
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

# Access keys, generated once per cluster state (moto accepts any key; they are real all the same).
ensure_os_credentials() { # NAME
  local f="$OS_DIR/$1/credentials"
  [ -s "$f" ] && return 0
  mkdir -p "$OS_DIR/$1"
  ( umask 077
    printf 'AWS_ACCESS_KEY_ID=AKIA%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$(openssl rand -hex 8 | tr a-f A-F)" "$(openssl rand -base64 30 | tr '+/' 'xy')" >"$f.partial" )
  mv "$f.partial" "$f"
}
os_key() { sed -n "s/^$2=//p" "$OS_DIR/$1/credentials"; } # NAME VAR

moto_up() { curl -s -o /dev/null --noproxy '*' --max-time 2 "http://127.0.0.1:${OS_MOTO_PORT[$1]}/"; }
front_refused() { ! ss -ltnH "sport = :${OS_TLS_PORT[$1]}" | grep -q .; }

# A running moto of this store from the current venv (a version bump restarts it).
moto_running() {
  pid_alive "moto-$1" || return 1
  tr '\0' ' ' <"/proc/$(cat "$STATE/pids/moto-$1.pid")/cmdline" 2>/dev/null | grep -qF "$OS_VENV/bin/python"
}

start_moto() { # NAME
  local n="$1"
  [ -f "$STATE/pids/moto-$n.pid" ] && stop_pid "moto-$n" "$(cat "$STATE/pids/moto-$n.pid")"
  rm -f "$STATE/pids/moto-$n.pid"
  if ss -ltnH "sport = :${OS_MOTO_PORT[$n]}" | grep -q .; then
    die "port 127.0.0.1:${OS_MOTO_PORT[$n]} (moto of $n) is taken by a process not recorded in $STATE/pids"
  fi
  start_proc "moto-$n" "$OS_VENV/bin/python" -m moto.server -H 127.0.0.1 -p "${OS_MOTO_PORT[$n]}"
}

write_nginx_conf() { # NAME FILE
  local n="$1" d="$OS_DIR/$1"
  cat >"$2" <<EOF
# Written by sectordb e2e/cluster: TLS front of object store $n (moto on 127.0.0.1:${OS_MOTO_PORT[$n]}).
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
    # pgBackRest uploads are buffered to disk or refused).
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_set_header Host \$http_host;
    proxy_set_header Connection "";
    proxy_connect_timeout 5s;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    location / { proxy_pass http://127.0.0.1:${OS_MOTO_PORT[$n]}; }
  }
}
EOF
}

stop_front() { # NAME
  local n="$1" f="$STATE/pids/nginx-$1.pid"
  [ -f "$f" ] && stop_pid "nginx-$n" "$(cat "$f")"
  rm -f "$f"
  wait_for 10 "port ${OS_TLS_PORT[$n]} closed" front_refused || die "port $NODE_IP:${OS_TLS_PORT[$n]} still listening"
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
  wait_for 10 "TLS front of $n on $NODE_IP:${OS_TLS_PORT[$n]}" bash -c "ss -ltnH 'sport = :${OS_TLS_PORT[$n]}' | grep -q ." \
    || die "nginx of $n not listening (log: $STATE/logs/nginx-$n.log)"
}

# Create any missing bucket (moto loses them all when it restarts), straight on moto's port.
ensure_buckets() { # NAMES...
  local n missing=()
  for n in "$@"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 5 -I \
        "http://127.0.0.1:${OS_MOTO_PORT[$n]}/${OS_BUCKET[$n]}")" = 200 ] || missing+=("$n")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  for n in "${missing[@]}"; do
    log "creating bucket ${OS_BUCKET[$n]} ($OS_REGION) on $n"
    "${COMPONENT_ENV[@]}" ENDPOINT="http://127.0.0.1:${OS_MOTO_PORT[$n]}" BUCKET="${OS_BUCKET[$n]}" REGION="$OS_REGION" \
      AWS_ACCESS_KEY_ID="$(os_key "$n" AWS_ACCESS_KEY_ID)" AWS_SECRET_ACCESS_KEY="$(os_key "$n" AWS_SECRET_ACCESS_KEY)" \
      "$OS_VENV/bin/python" - >&2 <<'EOF' || die "creating bucket ${OS_BUCKET[$n]} on $n failed"
import os
import boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], region_name=os.environ["REGION"],
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
try:
    s3.create_bucket(Bucket=os.environ["BUCKET"],
                     CreateBucketConfiguration={"LocationConstraint": os.environ["REGION"]})
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
EOF
  done
}

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

# Everything for the given stores, except the Secrets: venv, PKI, keys, moto, buckets, fronts.
ensure_object_stores() { # NAMES...
  local n started=()
  ensure_os_venv
  mkdir -p "$OS_DIR" "$STATE/logs" "$STATE/pids"
  # Python with boto3, for checks and tests (a wrapper: a symlink would not find the venv).
  printf '#!/bin/sh\nexec %s "$@"\n' "$OS_VENV/bin/python" >"$OS_DIR/python.new"
  chmod 0755 "$OS_DIR/python.new"; mv -f "$OS_DIR/python.new" "$OS_DIR/python"
  ensure_os_pki
  for n in "$@"; do
    ensure_os_credentials "$n"
    moto_running "$n" && continue
    start_moto "$n"; started+=("$n")
  done
  for n in "${started[@]}"; do   # the moto servers start side by side (about 1 s each)
    wait_for 30 "moto of $n on 127.0.0.1:${OS_MOTO_PORT[$n]}" moto_up "$n" && pid_alive "moto-$n" \
      || die "moto of $n did not start (log: $STATE/logs/moto-$n.log)"
  done
  ensure_buckets "$@"
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

cmd_object_store_stop() { # NAME
  os_valid_name "$1"
  [ -f "$STATE/pids/nginx-$1.pid" ] || log "TLS front of $1 was not running"
  stop_front "$1"
  log "object store $1 cut off: $NODE_IP:${OS_TLS_PORT[$1]} refuses connections (moto and its data stay)"
}

cmd_object_store_start() { # NAME
  os_valid_name "$1"
  all_running || die "cluster is not up (run e2e/cluster up)"
  ensure_object_stores "$1" >&2
  log "object store $1 serving on https://$NODE_IP:${OS_TLS_PORT[$1]}"
}

# Stop every front and moto (by recorded PID, then any leftover of ours), remove their runtime
# files. Keeps the CA, the keys and the venv; the Secrets stay (they are still right).
stop_object_stores() {
  local n p c
  for n in "${OBJECT_STORES[@]}"; do
    [ -f "$STATE/pids/nginx-$n.pid" ] && stop_pid "nginx-$n" "$(cat "$STATE/pids/nginx-$n.pid")"
    rm -f "$STATE/pids/nginx-$n.pid"
  done
  for n in "${OBJECT_STORES[@]}"; do
    [ -f "$STATE/pids/moto-$n.pid" ] && stop_pid "moto-$n" "$(cat "$STATE/pids/moto-$n.pid")"
    rm -f "$STATE/pids/moto-$n.pid"
  done
  # Leftovers: an nginx master running one of our configurations, a moto from our venvs.
  for p in /proc/[0-9]*; do
    c="$( (tr '\0' ' ' <"$p/cmdline") 2>/dev/null)" || continue
    case "$c" in
      "nginx: master process"*"-c $OS_DIR/"*|"$CACHE/object-stores/venv-"*"/bin/python -m moto.server "*)
        log "killing leftover ${c:0:100} (${p#/proc/})"; kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
    esac
  done
  rm -rf "$OS_DIR"/*/tmp "$OS_DIR"/*/nginx.conf "$OS_DIR"/*/nginx.pid 2>/dev/null || true
  for n in "${OBJECT_STORES[@]}"; do
    rm -f "$STATE/logs/moto-$n.log" "$STATE/logs/nginx-$n.log" "$STATE/logs/nginx-$n.access.log"
  done
  return 0
}

cmd_object_stores_down() {
  [ -d "$OS_DIR" ] || { log "no object stores"; return 0; }
  stop_object_stores
  log "object stores stopped (their data is gone; CA and keys kept)"
}
