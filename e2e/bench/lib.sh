# shellcheck shell=bash
# Sourced by the benchmarks: what every one of them needs from the cluster.

# agency_namespace NAMESPACE [CODE]: the namespace and the Agency (same name) that owns it, as
# the platform authority registers one; the operator serves nothing in an unregistered namespace.
# The Agency goes with `agency_namespace_delete`.
agency_namespace() {
  local ns="$1" code="${2:-000.00.12.H53}"
  kubectl create namespace "$ns" >/dev/null
  kubectl apply -f - >/dev/null <<YAML
apiVersion: sectordb.io/v1alpha1
kind: Agency
metadata: {name: $ns, labels: {sectordb.io/bench: "true"}}
spec: {code: "$code", name: "Benchmark agency $ns", namespaces: [$ns]}
YAML
}

# agency_namespace_delete NAMESPACE...: the namespaces and their Agencies.
agency_namespace_delete() {
  kubectl delete namespace "$@" --wait=true --timeout=5m >/dev/null 2>&1 || true
  kubectl delete agency "$@" --ignore-not-found >/dev/null 2>&1 || true
}

# superuser_files DIR: the operator's client certificate (the superuser's only way in over the
# network) as the files libpq reads, the key readable by this user only.
superuser_files() {
  local k
  for k in tls.crt tls.key; do
    kubectl -n sectordb-system get secret sectordb-superuser -o "jsonpath={.data.${k//./\\.}}" | base64 -d >"$1/$k"
  done
  chmod 0600 "$1/tls.key"
}

# superuser_conninfo NAMESPACE DB DBNAME: a libpq conninfo for the superuser of SectorDatabase DB,
# to the server its app Secret names, verified against its CA.
superuser_conninfo() {
  local dir k; dir=$(mktemp -d)
  for k in host hostaddr port ca.crt; do
    kubectl -n "$1" get secret "$2-app" -o "jsonpath={.data.${k//./\\.}}" | base64 -d >"$dir/$k"
  done
  superuser_files "$dir"
  echo "host=$(cat "$dir/host") hostaddr=$(cat "$dir/hostaddr") port=$(cat "$dir/port") dbname=$3 user=postgres sslmode=verify-full sslrootcert=$dir/ca.crt sslcert=$dir/tls.crt sslkey=$dir/tls.key connect_timeout=5"
}

# field ROLE KEY: a value of the harness's data center ROLE, from the JSON lines in $stores
# (what `e2e/cluster object-stores` printed).
# shellcheck disable=SC2154 # stores: set by the benchmark that sources this file
field() {
  python3 -c "import json,sys
for l in sys.argv[1].splitlines():
    d = json.loads(l)
    if d['role'] == sys.argv[2]: print(d[sys.argv[3]])" "$stores" "$1" "$2"
}

# repo ROLE PREFIX: a BackupPolicy repository (YAML flow style) in that data center under PREFIX.
repo() {
  echo "{name: $(field "$1" name), role: $1, s3: {endpoint: \"$(field "$1" endpoint)\", bucket: $(field "$1" bucket), region: $(field "$1" region), pathPrefix: $2, credentialsSecret: {name: $(field "$1" credentialsSecret)}, caSecret: {name: $(field "$1" caSecret)}}}"
}

# operator_metric NAME: the sum of the operator's metric NAME over its labels.
operator_metric() {
  local pod; pod=$(kubectl -n sectordb-system get pods -l app.kubernetes.io/name=sectordb-operator -o jsonpath='{.items[0].metadata.name}')
  kubectl get --raw "/api/v1/namespaces/sectordb-system/pods/$pod:8080/proxy/metrics" \
    | awk -v m="$1" '$1 ~ "^"m {s += $2} END {print s + 0}'
}
