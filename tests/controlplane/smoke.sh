#!/usr/bin/env bash
# Smoke test of the control plane built by build.sh: starts etcd,
# kube-apiserver and kube-controller-manager on free loopback ports with the
# flag sets documented in README.md, checks /readyz, then checks that the
# controller-manager works (ServiceAccount + kube-root-ca.crt in a new
# namespace, Deployment -> ReplicaSet -> Pod, garbage collection, namespace
# deletion) and that TokenRequest / OIDC discovery work. Stops everything it
# started on exit. Needs: openssl, curl, python3.
#
# KEEP=1 leaves the temp dir (certs, logs) in place for inspection.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="$(bash "$HERE/build.sh" | tail -n1)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pgmcp-cp-smoke.XXXXXX")"
PIDS=()

cleanup() {
	local rc=$? i pid t
	# Stop in reverse start order: controller-manager, apiserver, etcd.
	for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
		pid=${PIDS[i]}
		t=$SECONDS
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
		[[ -n "${SMOKE_DEBUG:-}" ]] && echo "stopped pid $pid in $((SECONDS - t))s" >&2
	done
	if [[ $rc -ne 0 ]]; then
		echo "--- smoke test FAILED (rc=$rc); log tails:" >&2
		for f in "$WORK"/*.log; do
			[[ -f "$f" ]] || continue
			echo "=== $f" >&2
			tail -n 30 "$f" >&2
		done
	fi
	if [[ "${KEEP:-0}" == 1 ]]; then
		echo "kept $WORK" >&2
	else
		rm -rf "$WORK"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- certificates
cd "$WORK"
mkdir -p pki etcd-data
cat >pki/openssl.cnf <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, IP:127.0.0.1, IP:10.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
(
	cd pki
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 \
		-subj "/CN=pgmcp-test-ca" -config openssl.cnf -extensions ca 2>/dev/null
	# serving cert for kube-apiserver
	openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
		-subj "/CN=kube-apiserver" -config openssl.cnf 2>/dev/null
	openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
		-out apiserver.crt -days 7 -extfile openssl.cnf -extensions server 2>/dev/null
	# admin client cert (O=system:masters)
	openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
		-subj "/O=system:masters/CN=pgmcp-admin" -config openssl.cnf 2>/dev/null
	openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
		-out admin.crt -days 7 -extfile openssl.cnf -extensions client 2>/dev/null
	# service-account signing key pair
	openssl genrsa -out sa.key 2048 2>/dev/null
	openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

ETCD_CLIENT_PORT="$(free_port)"
ETCD_PEER_PORT="$(free_port)"
API_PORT="$(free_port)"
API="https://127.0.0.1:$API_PORT"

# ------------------------------------------------------------------------ etcd
"$BIN/etcd" \
	--name=pgmcp-test \
	--data-dir="$WORK/etcd-data" \
	--listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
	--advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
	--listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
	--initial-cluster="pgmcp-test=http://127.0.0.1:$ETCD_PEER_PORT" \
	--unsafe-no-fsync \
	--log-level=warn \
	>etcd.log 2>&1 &
PIDS+=($!)

t0=$SECONDS
until curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'; do
	((SECONDS - t0 < 30)) || { echo "etcd not healthy after 30s" >&2; exit 1; }
	sleep 0.2
done
echo "etcd healthy after $((SECONDS - t0))s on 127.0.0.1:$ETCD_CLIENT_PORT"

# -------------------------------------------------------------- kube-apiserver
"$BIN/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
	--bind-address=127.0.0.1 \
	--advertise-address=127.0.0.1 \
	--secure-port="$API_PORT" \
	--cert-dir="$WORK/apiserver-certs" \
	--tls-cert-file="$WORK/pki/apiserver.crt" \
	--tls-private-key-file="$WORK/pki/apiserver.key" \
	--client-ca-file="$WORK/pki/ca.crt" \
	--authorization-mode=RBAC \
	--service-account-issuer="$API" \
	--service-account-key-file="$WORK/pki/sa.pub" \
	--service-account-signing-key-file="$WORK/pki/sa.key" \
	--service-cluster-ip-range=10.0.0.0/24 \
	--allow-privileged=true \
	>apiserver.log 2>&1 &
PIDS+=($!)

CURL=(curl -fsS --cacert "$WORK/pki/ca.crt" --cert "$WORK/pki/admin.crt" --key "$WORK/pki/admin.key")
t0=$SECONDS
until [[ "$("${CURL[@]}" "$API/readyz" 2>/dev/null)" == ok ]]; do
	((SECONDS - t0 < 60)) || { echo "kube-apiserver not ready after 60s" >&2; exit 1; }
	sleep 0.25
done
echo "kube-apiserver ready after $((SECONDS - t0))s on $API"

cat >kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: $API
    certificate-authority: $WORK/pki/ca.crt
users:
- name: admin
  user:
    client-certificate: $WORK/pki/admin.crt
    client-key: $WORK/pki/admin.key
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
EOF

# ----------------------------------------------------- kube-controller-manager
"$BIN/kube-controller-manager" \
	--kubeconfig="$WORK/kubeconfig" \
	--leader-elect=false \
	--secure-port=0 \
	--controllers='*' \
	--service-account-private-key-file="$WORK/pki/sa.key" \
	--root-ca-file="$WORK/pki/ca.crt" \
	--cluster-signing-cert-file="$WORK/pki/ca.crt" \
	--cluster-signing-key-file="$WORK/pki/ca.key" \
	>controller-manager.log 2>&1 &
KCM_PID=$!
PIDS+=($KCM_PID)

# ------------------------------------------------------------------- checks
wait_for() { # description, timeout seconds, command...
	local what=$1 limit=$2 t=$SECONDS
	shift 2
	until "$@" >/dev/null 2>&1; do
		kill -0 "$KCM_PID" 2>/dev/null || { echo "kube-controller-manager exited" >&2; return 1; }
		((SECONDS - t < limit)) || { echo "timed out after ${limit}s waiting for $what" >&2; return 1; }
		sleep 0.25
	done
	echo "ok: $what ($((SECONDS - t))s)"
}
post() { "${CURL[@]}" -X POST -H 'Content-Type: application/json' --data "$2" "$API$1"; }
get() { "${CURL[@]}" "$API$1"; }
gone() { [[ "$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$WORK/pki/ca.crt" --cert "$WORK/pki/admin.crt" --key "$WORK/pki/admin.key" "$API$1")" == 404 ]]; }
count_items() { get "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))'; }
has_items() { [[ "$(count_items "$1")" -ge "$2" ]]; }
no_items() { [[ "$(count_items "$1")" -eq 0 ]]; }

NS=smoke
post /api/v1/namespaces '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"'$NS'"}}' >/dev/null
wait_for "ServiceAccount $NS/default" 60 get /api/v1/namespaces/$NS/serviceaccounts/default
wait_for "ConfigMap $NS/kube-root-ca.crt" 60 get /api/v1/namespaces/$NS/configmaps/kube-root-ca.crt

post /apis/apps/v1/namespaces/$NS/deployments '{
  "apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {"name": "web"},
  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
    "template": {"metadata": {"labels": {"app": "web"}},
      "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}}}}' >/dev/null
wait_for "Deployment -> ReplicaSet" 60 has_items /apis/apps/v1/namespaces/$NS/replicasets 1
wait_for "ReplicaSet -> 2 Pods (Pending, no kubelet)" 60 has_items /api/v1/namespaces/$NS/pods 2

"${CURL[@]}" -X DELETE "$API/apis/apps/v1/namespaces/$NS/deployments/web" >/dev/null
wait_for "garbage collection of ReplicaSet" 60 no_items /apis/apps/v1/namespaces/$NS/replicasets
wait_for "garbage collection of Pods" 60 no_items /api/v1/namespaces/$NS/pods

TOKEN_JSON="$(post /api/v1/namespaces/$NS/serviceaccounts/default/token \
	'{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"audiences":["api://AzureADTokenExchange"],"expirationSeconds":3600}}')"
expect() { # description, pattern, text
	if grep -q -- "$2" <<<"$3"; then
		echo "ok: $1"
	else
		echo "FAILED: $1: pattern $2 not in: ${3:0:400}" >&2
		return 1
	fi
}
expect "TokenRequest (audience api://AzureADTokenExchange)" '"token": *"ey' "$TOKEN_JSON"
expect "OIDC discovery, issuer $API" "\"issuer\": *\"$API\"" "$(get /.well-known/openid-configuration)"
expect "JWKS" '"keys"' "$(get /openid/v1/jwks)"
anon_jwks() { curl -sS -o /dev/null -w '%{http_code}' --cacert "$WORK/pki/ca.crt" "$API/openid/v1/jwks"; }
echo "info: anonymous GET /openid/v1/jwks -> HTTP $(anon_jwks) (default RBAC)"
post /apis/rbac.authorization.k8s.io/v1/clusterrolebindings '{
  "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
  "metadata": {"name": "pgmcp-anonymous-issuer-discovery"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:service-account-issuer-discovery"},
  "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}]}' >/dev/null
anon_jwks_ok() { [[ "$(anon_jwks)" == 200 ]]; }
wait_for "anonymous JWKS after binding system:service-account-issuer-discovery to system:unauthenticated" 30 anon_jwks_ok

# kubectl and helm, if tests/scripts/install-kubectl-helm.sh has installed them.
TOOLS="${PGMCP_CACHE:-$(cd "$HERE/../.." && pwd)/.cache}/tools/kubectl-layer-2.2.2/bin"
if [[ -x "$TOOLS/kubectl" && -x "$TOOLS/helm" ]]; then
	export KUBECONFIG="$WORK/kubeconfig" HELM_CACHE_HOME="$WORK/helm/cache" \
		HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
	expect "kubectl get serviceaccount" "default" "$("$TOOLS/kubectl" -n $NS get serviceaccount default -o name)"
	"$TOOLS/helm" create "$WORK/chart" >/dev/null
	"$TOOLS/helm" install smoke "$WORK/chart" -n $NS >/dev/null
	expect "helm install" "deployed" "$("$TOOLS/helm" status smoke -n $NS)"
	wait_for "helm chart Deployment -> Pod" 60 has_items /api/v1/namespaces/$NS/pods 1
	"$TOOLS/helm" uninstall smoke -n $NS >/dev/null
	left="$("$TOOLS/helm" list -n $NS -q)"
	[[ -z "$left" ]] || { echo "FAILED: helm uninstall left: $left" >&2; exit 1; }
	echo "ok: helm uninstall"
else
	echo "skip: kubectl/helm not installed in $TOOLS"
fi

"${CURL[@]}" -X DELETE "$API/api/v1/namespaces/$NS" >/dev/null
wait_for "namespace deletion" 120 gone /api/v1/namespaces/$NS

echo "RSS MiB: etcd $(($(ps -o rss= -p "${PIDS[0]}") / 1024)), kube-apiserver $(($(ps -o rss= -p "${PIDS[1]}") / 1024)), kube-controller-manager $(($(ps -o rss= -p "${PIDS[2]}") / 1024))"
echo "controller-manager log: $(grep -c '^E' controller-manager.log || true) error lines"
echo "smoke test passed"
