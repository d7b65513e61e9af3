"""Checks on rendered manifests, used by scripts/check-chart. Needs PyYAML only.

  chart_checks.py chart FILE NAMESPACE [no-aggregation]
                                            the chart's rendering (helm template output);
                                            no-aggregation: rendered with rbac.aggregateViewer=false
  chart_checks.py samples FILE [CRD_DIR]    the samples' kustomize build, checked against the
                                            CRDs in CRD_DIR when that directory has any

Prints every failure and exits 1 if there was one.
"""
import glob
import os
import re
import sys

import yaml

FAILURES = []

# API versions every object may use: all served by Kubernetes 1.20 and still by current ones.
# (No policy/v1, no batch/v1 CronJob, no beta APIs that were removed later.)
ALLOWED_API_VERSIONS = {
    "v1",
    "apps/v1",
    "rbac.authorization.k8s.io/v1",
    "apiextensions.k8s.io/v1",
    "coordination.k8s.io/v1",
    "sectordb.io/v1alpha1",
}
SECTORDB_RESOURCES = ["sectordatabases", "datasharingconnections", "backuppolicies"]
READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete", "deletecollection"}


def fail(msg):
    FAILURES.append(msg)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    found = [d for d in docs if d.get("kind") == kind
             and (name is None or d["metadata"]["name"] == name)]
    return found


def one(docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        fail(f"expected exactly one {kind} {name}, found {len(found)}")
        return None
    return found[0]


def verbs_on(role, group, resource):
    verbs = set()
    for rule in role.get("rules", []):
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs |= set(rule.get("verbs", []))
    return verbs


def check_common(docs):
    for d in docs:
        what = f"{d.get('kind')} {d.get('metadata', {}).get('name')}"
        if d.get("apiVersion") not in ALLOWED_API_VERSIONS:
            fail(f"{what}: apiVersion {d.get('apiVersion')} is not served by Kubernetes 1.20..current")
        if d.get("kind") == "CronJob" or d.get("kind") == "PodDisruptionBudget":
            fail(f"{what}: kind needs an API that 1.20 and current releases do not share")


def check_chart(docs, namespace, aggregated=True):
    check_common(docs)
    for d in docs:
        labels = d["metadata"].get("labels", {})
        what = f"{d['kind']} {d['metadata']['name']}"
        if d["kind"] == "CustomResourceDefinition":
            # Generated from the Rust types; what matters is that uninstalling keeps them.
            if d["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
                fail(f"{what}: no helm.sh/resource-policy: keep")
            continue
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                    "app.kubernetes.io/part-of"):
            if key not in labels:
                fail(f"{what}: label {key} missing")
        for rule in d.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                if "*" in rule.get(field, []):
                    fail(f"{what}: wildcard in {field}")

    dep = one(docs, "Deployment", "sectordb-operator")
    if dep:
        check_deployment(dep, namespace)
    svc = one(docs, "Service", "sectordb-operator-metrics")
    if svc:
        if svc["metadata"].get("namespace") != namespace:
            fail(f"Service: namespace {svc['metadata'].get('namespace')} != {namespace}")
        ports = svc["spec"]["ports"]
        if not any(p.get("name") == "http-metrics" and p.get("targetPort") == "http" for p in ports):
            fail("Service sectordb-operator-metrics: no port http-metrics -> http")
        if dep and svc["spec"]["selector"].items() - dep["spec"]["template"]["metadata"]["labels"].items():
            fail("Service sectordb-operator-metrics: selector does not match the operator pods")

    check_operator_rbac(docs, namespace, dep)
    check_user_roles(docs, aggregated)


def check_deployment(dep, namespace):
    if dep["metadata"].get("namespace") != namespace:
        fail(f"Deployment: namespace {dep['metadata'].get('namespace')} != {namespace}")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    if spec["selector"]["matchLabels"].items() - spec["template"]["metadata"]["labels"].items():
        fail("Deployment: selector does not match the pod template's labels")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail("Deployment: pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser") != 65532:
        fail(f"Deployment: pod securityContext.runAsUser {psc.get('runAsUser')} != 65532")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail("Deployment: pod seccompProfile is not RuntimeDefault")
    if not isinstance(pod.get("terminationGracePeriodSeconds"), int):
        fail("Deployment: terminationGracePeriodSeconds missing")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        fail("Deployment: uses host namespaces")
    if pod.get("volumes"):
        fail("Deployment: the operator needs no volumes")
    containers = pod.get("containers", [])
    if len(containers) != 1:
        fail(f"Deployment: expected one container, found {len(containers)}")
        return
    c = containers[0]
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail("Deployment: readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail("Deployment: allowPrivilegeEscalation is not false")
    if sc.get("privileged"):
        fail("Deployment: privileged")
    if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
        fail("Deployment: capabilities are not drop [ALL] with nothing added")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in res.get(kind, {}):
                fail(f"Deployment: resources.{kind}.{r} missing")
    if c.get("args") != ["run"]:
        fail(f"Deployment: args {c.get('args')} != ['run']")
    if "command" in c:
        fail("Deployment: command set; the image's entrypoint is the operator binary")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if "http" not in ports:
        fail("Deployment: no container port named http")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "http":
            fail(f"Deployment: {probe} is not GET {path} on port http")
    env = {e["name"]: e for e in c.get("env", [])}
    for name, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != field:
            fail(f"Deployment: {name} is not the downward API's {field}")
    addr = env.get("HTTP_ADDR", {}).get("value", "")
    if not re.fullmatch(r"0\.0\.0\.0:(\d+)", addr) or int(addr.split(":")[1]) != ports.get("http"):
        fail(f"Deployment: HTTP_ADDR {addr!r} does not listen on the http port")
    for name in ("LEASE_NAME", "RUST_LOG"):
        if not env.get(name, {}).get("value"):
            fail(f"Deployment: env {name} missing")


def check_operator_rbac(docs, namespace, dep):
    sa_name = dep["spec"]["template"]["spec"]["serviceAccountName"] if dep else None
    cr = one(docs, "ClusterRole", "sectordb-operator")
    if cr:
        expected = {
            ("apiextensions.k8s.io", "customresourcedefinitions"): READ,
            ("", "events"): {"create", "patch"},
            ("events.k8s.io", "events"): {"create", "patch"},
            ("", "namespaces"): READ,
            ("", "configmaps"): READ | {"create", "patch"},
            ("", "services"): READ | {"create", "patch"},
            ("", "secrets"): READ | {"create", "patch", "delete"},
            ("apps", "statefulsets"): READ | {"create", "patch"},
            ("networking.k8s.io", "networkpolicies"): READ | {"create", "patch", "delete"},
            ("", "persistentvolumeclaims"): {"get", "list", "patch", "delete"},
            ("", "pods"): {"get", "list", "patch", "create", "delete"},
            ("", "pods/exec"): {"get", "create"},
            ("policy", "poddisruptionbudgets"): {"get", "list", "watch", "create", "patch"},
        }
        expected[("sectordb.io", "agencies")] = READ
        expected[("sectordb.io", "agencies/status")] = {"get", "patch"}
        expected[("sectordb.io", "sectorbackups")] = {"get", "list", "create", "delete"}
        expected[("sectordb.io", "sectorbackups/status")] = {"get", "patch"}
        for r in SECTORDB_RESOURCES:
            expected[("sectordb.io", r)] = READ | {"patch"}
            expected[("sectordb.io", r + "/status")] = {"get", "patch"}
            expected[("sectordb.io", r + "/finalizers")] = {"update"}
        granted = {}
        for rule in cr["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    granted.setdefault((g, r), set()).update(rule["verbs"])
        if granted != expected:
            for key in sorted(set(granted) | set(expected)):
                if granted.get(key) != expected.get(key):
                    fail(f"ClusterRole sectordb-operator: {key} grants {sorted(granted.get(key, []))}, "
                         f"expected {sorted(expected.get(key, []))}")
    crb = one(docs, "ClusterRoleBinding", "sectordb-operator")
    if crb:
        if crb["roleRef"]["name"] != "sectordb-operator":
            fail("ClusterRoleBinding sectordb-operator: wrong roleRef")
        if crb["subjects"] != [{"kind": "ServiceAccount", "name": sa_name, "namespace": namespace}]:
            fail(f"ClusterRoleBinding sectordb-operator: subjects {crb['subjects']}")
    roles = find(docs, "Role")
    lease_roles = [r for r in roles if any("leases" in rule["resources"] for rule in r["rules"])]
    if len(lease_roles) != 1:
        fail(f"expected one Role for the Lease, found {len(lease_roles)}")
    else:
        role = lease_roles[0]
        if role["metadata"].get("namespace") != namespace:
            fail("Lease Role is not in the release namespace")
        verbs = set()
        for rule in role["rules"]:
            if rule["apiGroups"] != ["coordination.k8s.io"] or rule["resources"] != ["leases"]:
                fail(f"Lease Role: unexpected rule {rule}")
            verbs |= set(rule["verbs"])
        if verbs != {"get", "create", "update", "patch"}:
            fail(f"Lease Role: verbs {sorted(verbs)}")
        lease = {e["name"]: e.get("value") for e in
                 dep["spec"]["template"]["spec"]["containers"][0]["env"]}.get("LEASE_NAME") if dep else None
        for rule in role["rules"]:
            names = rule.get("resourceNames")
            if names is not None and names != [lease]:
                fail(f"Lease Role: resourceNames {names} != the operator's LEASE_NAME {lease}")
        rb = [b for b in find(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
        if len(rb) != 1 or rb[0]["subjects"] != [{"kind": "ServiceAccount", "name": sa_name,
                                                 "namespace": namespace}]:
            fail("Lease Role: not bound to the operator's ServiceAccount exactly once")
    sas = find(docs, "ServiceAccount")
    if sas and sa_name not in [s["metadata"]["name"] for s in sas]:
        fail(f"ServiceAccount {sa_name} used by the Deployment is not rendered")


def check_user_roles(docs, aggregated):
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    want = {
        "sectordb-agency-admin": {"sectordatabases": READ | WRITE,
                                  "datasharingconnections": READ, "backuppolicies": READ,
                                  "sectorbackups": READ, "agencies": set()},
        "sectordb-platform-admin": {**{r: READ | WRITE for r in SECTORDB_RESOURCES + ["agencies"]},
                                    "sectorbackups": READ | {"delete"}},
        "sectordb-viewer": {r: READ for r in SECTORDB_RESOURCES + ["agencies", "sectorbackups"]},
    }
    for name, expected in want.items():
        role = roles.get(name)
        if not role:
            fail(f"ClusterRole {name} missing")
            continue
        if not role["metadata"].get("annotations", {}).get("sectordb.io/description"):
            fail(f"ClusterRole {name}: no sectordb.io/description annotation")
        for rule in role["rules"]:
            if rule["apiGroups"] != ["sectordb.io"]:
                fail(f"ClusterRole {name}: grants outside sectordb.io: {rule}")
        for resource, verbs in expected.items():
            got = verbs_on(role, "sectordb.io", resource)
            if got != verbs:
                fail(f"ClusterRole {name}: {resource} verbs {sorted(got)}, expected {sorted(verbs)}")
            for sub in ("status", "finalizers"):
                got = verbs_on(role, "sectordb.io", f"{resource}/{sub}")
                if got - {"get"}:
                    fail(f"ClusterRole {name}: may write {resource}/{sub}: {sorted(got)}")
    viewer = roles.get("sectordb-viewer")
    if viewer:
        is_aggregated = viewer["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view") == "true"
        if is_aggregated != aggregated:
            fail(f"ClusterRole sectordb-viewer: aggregated to view is {is_aggregated}, expected {aggregated}")
    for name in ("sectordb-agency-admin", "sectordb-platform-admin"):
        labels = roles.get(name, {}).get("metadata", {}).get("labels", {})
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            fail(f"ClusterRole {name}: aggregated into a built-in role")


# --- samples ----------------------------------------------------------------------------------

def schema_errors(value, schema, path):
    """The parts of OpenAPI v3 structural-schema validation that catch wrong samples: types,
    unknown fields (the apiserver would prune them silently), required, enum, ranges, patterns."""
    errs = []
    if value is None:
        if not schema.get("nullable"):
            errs.append(f"{path}: null")
        return errs
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errs.append(f"{path}: not an int or string")
        return errs
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool,
             "integer": int, "number": (int, float)}
    if t in types and (not isinstance(value, types[t])
                       or (t in ("integer", "number") and isinstance(value, bool))):
        return [f"{path}: {type(value).__name__}, expected {t}"]
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{path}: {value} > maximum {schema['maximum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errs.append(f"{path}: longer than {schema['maxLength']}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errs.append(f"{path}: shorter than {schema['minLength']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errs.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errs.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errs += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                errs.append(f"{path}.{req}: required")
        for key, item in value.items():
            if key in props:
                errs += schema_errors(item, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errs += schema_errors(item, schema["additionalProperties"], f"{path}.{key}")
            elif props and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errs.append(f"{path}.{key}: unknown field")
    return errs


def load_crds(crd_dir):
    crds = {}
    for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
        text = open(path).read()
        if "{{" in text:  # a Helm template: strip the template lines
            text = "\n".join(l for l in text.splitlines() if not l.strip().startswith("{{"))
        for doc in yaml.safe_load_all(text):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                spec = doc["spec"]
                for version in spec["versions"]:
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    crds[key] = (spec["scope"], version["schema"]["openAPIV3Schema"])
    return crds


def check_samples(docs, crd_dir):
    check_common(docs)
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    for kind, count in (("Namespace", 2), ("RoleBinding", 2), ("SectorDatabase", 2),
                        ("DataSharingConnection", 1), ("BackupPolicy", 1), ("Agency", 2)):
        if len(kinds.get(kind, [])) != count:
            fail(f"samples: expected {count} {kind}, found {len(kinds.get(kind, []))}")
    for rb in kinds.get("RoleBinding", []):
        if rb["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "sectordb-agency-admin"}:
            fail(f"samples: RoleBinding {rb['metadata']['name']} does not bind sectordb-agency-admin")
    namespaces = {n["metadata"]["name"] for n in kinds.get("Namespace", [])}
    for d in docs:
        ns = d["metadata"].get("namespace")
        if d["kind"] == "BackupPolicy" and ns:
            fail("samples: BackupPolicy is cluster-scoped but has a namespace")
        if d["kind"] in ("SectorDatabase", "DataSharingConnection", "RoleBinding") and ns not in namespaces:
            fail(f"samples: {d['kind']} {d['metadata']['name']} in unknown namespace {ns}")
    for dsc in kinds.get("DataSharingConnection", []):
        provider = [s for s in kinds.get("SectorDatabase", [])
                    if s["metadata"]["name"] == dsc["spec"]["provider"]["database"]
                    and s["metadata"]["namespace"] == dsc["metadata"]["namespace"]]
        if len(provider) != 1:
            fail(f"samples: connection {dsc['metadata']['name']}: provider database not in its namespace")
        elif dsc["spec"]["provider"]["dataset"] not in [
                x["name"] for x in provider[0]["spec"].get("sharing", {}).get("datasets", [])]:
            fail(f"samples: connection {dsc['metadata']['name']}: dataset not declared by the provider")
        if dsc["spec"]["consumer"]["namespace"] not in namespaces:
            fail(f"samples: connection {dsc['metadata']['name']}: consumer namespace not in the samples")
    # Every sample database is served: its namespace is registered to an Agency with its code.
    owners = {ns: a["spec"]["code"] for a in kinds.get("Agency", []) for ns in a["spec"]["namespaces"]}
    for db in kinds.get("SectorDatabase", []):
        if owners.get(db["metadata"]["namespace"]) != db["spec"]["agency"]["code"]:
            fail(f"samples: database {db['metadata']['name']}: no Agency with its code owns its namespace")

    crds = load_crds(crd_dir) if crd_dir and os.path.isdir(crd_dir) else {}
    if not crds:
        print(f"note: no CRDs in {crd_dir!r} yet; samples not checked against the schemas")
        return
    for d in docs:
        if not d["apiVersion"].startswith("sectordb.io/"):
            continue
        key = (d["apiVersion"], d["kind"])
        if key not in crds:
            fail(f"samples: no CRD for {key}")
            continue
        scope, schema = crds[key]
        if (scope == "Namespaced") != bool(d["metadata"].get("namespace")):
            fail(f"samples: {d['kind']} {d['metadata']['name']}: scope is {scope}")
        body = {k: v for k, v in d.items() if k not in ("apiVersion", "kind", "metadata")}
        props = {k: v for k, v in schema.get("properties", {}).items()
                 if k not in ("apiVersion", "kind", "metadata")}
        for err in schema_errors(body, dict(schema, properties=props), d["kind"] + " " + d["metadata"]["name"]):
            fail("samples: " + err)


def main():
    mode, path = sys.argv[1], sys.argv[2]
    docs = load(path)
    if mode == "chart":
        check_chart(docs, sys.argv[3], aggregated=sys.argv[4:5] != ["no-aggregation"])
    elif mode == "samples":
        check_samples(docs, sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(f"unknown mode {mode}")
    for f in FAILURES:
        print(f"FAIL: {f}", file=sys.stderr)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
