# shellcheck shell=bash
# Sourced by e2e/cluster and e2e/object-stores-check: certificates, every one with v3 extensions
# (rustls rejects v1 certificates), and the kubeconfigs that carry them. gen_ca and gen_cert
# issue one CA or one certificate into $STATE/pki (which must exist); make_pki issues all the
# cluster's; kubeconfig_for writes $STATE/NAME.kubeconfig from e2e/templates/kubeconfig.yaml.
# Expects lib/common.sh (log; render for kubeconfig_for) and STATE, and for make_pki and
# kubeconfig_for NODES, NODE_ADDR, HOST_IP and SVC_APISERVER_IP. Function definitions only:
# sourcing it runs nothing and reads no variable.

gen_ca() { # NAME CN
  local d="$STATE/pki"
  openssl genrsa -out "$d/$1.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$d/$1.key" -subj "/CN=$2" -days 3650 -sha256 -out "$d/$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

gen_cert() { # NAME SUBJECT USAGE(client|server|both) SANS CA
  local d="$STATE/pki" name="$1" subj="$2" usage="$3" sans="$4" ca="${5:-ca}" eku
  case "$usage" in client) eku=clientAuth ;; server) eku=serverAuth ;; *) eku=serverAuth,clientAuth ;; esac
  openssl genrsa -out "$d/$name.key" 2048 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subj" -out "$d/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/$ca.crt" -CAkey "$d/$ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$d/$name.ext" -out "$d/$name.crt" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"
}

make_pki() {
  local d="$STATE/pki" node
  [ -f "$d/done" ] && return 0
  log "issuing CA and certificates"
  mkdir -p "$d"; chmod 0700 "$d"
  gen_ca ca sectordb-local-ca
  gen_ca front-proxy-ca sectordb-front-proxy-ca
  gen_cert apiserver "/CN=kube-apiserver" server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$HOST_IP,IP:$SVC_APISERVER_IP,IP:127.0.0.1"
  gen_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client ""
  gen_cert admin "/O=system:masters/CN=kubernetes-admin" client ""
  gen_cert controller-manager "/CN=system:kube-controller-manager" client ""
  gen_cert scheduler "/CN=system:kube-scheduler" client ""
  gen_cert kube-proxy "/CN=system:kube-proxy" client ""
  gen_cert kube-router "/CN=system:kube-router" client ""
  for node in "${NODES[@]}"; do
    gen_cert "kubelet-client-$node" "/O=system:nodes/CN=system:node:$node" client ""
    gen_cert "kubelet-server-$node" "/CN=$node" server "DNS:$node,IP:${NODE_ADDR[$node]}"
  done
  gen_cert front-proxy-client "/CN=front-proxy-client" client "" front-proxy-ca
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  touch "$d/done"
}

kubeconfig_for() { # NAME CERTNAME
  local d="$STATE/pki" f="$STATE/$1.kubeconfig"
  render kubeconfig.yaml HOST_IP="$HOST_IP" NAME="$1" CA_DATA="$(base64 -w0 "$d/ca.crt")" \
    CERT_DATA="$(base64 -w0 "$d/$2.crt")" KEY_DATA="$(base64 -w0 "$d/$2.key")" >"$f"
  chmod 0600 "$f"
}
