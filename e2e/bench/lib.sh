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
