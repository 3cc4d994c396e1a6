#!/usr/bin/env bash
# The quick-start demo on the project's local cluster: forward a cluster Service to localhost, then
# intercept only the requests carrying "x-owner: me" to a process on this machine, and show that
# everyone else's requests are still served by the cluster. Starts the cluster when needed, cleans
# up its own objects at the end (the cluster keeps running: `make cluster-down` stops it).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source hack/lib/tools.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
VERSION=v0.0.0-demo
NS=bridge-demo
OUT="$PWD/_output/demo"
mkdir -p "$OUT"

say "Starting the local cluster (first run builds it: several minutes)"
eval "$(hack/cluster-up.sh | tail -n 1)"
echo "KUBECONFIG=$KUBECONFIG"
KUBECTL="$(command -v kubectl || tools::bin kubectl . kubectl)"

say "Building kubectl-bridge, its agent image and the sample app"
for b in kubectl-bridge:./cmd/kubectl-bridge bridge-agent:./cmd/bridge-agent echo:./test/workloads/echo; do
  CGO_ENABLED=0 go build -trimpath -ldflags "-X github.com/kubectl-bridge/kubectl-bridge/pkg/version.version=$VERSION" \
    -o "$OUT/${b%%:*}" "${b#*:}"
done
hack/load-image.sh ghcr.io/kubectl-bridge/e2e-echo:demo "$OUT/echo" >/dev/null
# The agent is pulled the way users' clusters pull it: from its release reference, here served by
# the cluster's loopback registry that mirrors ghcr.io.
hack/load-image.sh --push "ghcr.io/kubectl-bridge/bridge-agent:$VERSION" "$OUT/bridge-agent" >/dev/null
export PATH="$OUT:$PATH"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  kubectl-bridge clean --all -n "$NS" >/dev/null 2>&1 || true
  "$KUBECTL" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "Deploying the sample app: Deployment api (2 pods) behind Service api, and a client pod"
"$KUBECTL" delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
"$KUBECTL" create namespace "$NS" >/dev/null
until "$KUBECTL" -n "$NS" get serviceaccount default >/dev/null 2>&1; do sleep 0.5; done
"$KUBECTL" -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: ghcr.io/kubectl-bridge/e2e-echo:demo
        imagePullPolicy: Never
        args: [serve, --listen, ":8080"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: client
    image: ghcr.io/kubectl-bridge/e2e-echo:demo
    imagePullPolicy: Never
    args: [serve, --listen, ":9999"]
YAML
"$KUBECTL" -n "$NS" rollout status deployment/api --timeout=120s
"$KUBECTL" -n "$NS" wait pod/client --for=condition=Ready --timeout=120s >/dev/null

say "kubectl bridge forward svc/api: the cluster's Service on localhost"
kubectl-bridge forward -n "$NS" svc/api:18080:80 >"$OUT/forward.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q Healthy "$OUT/forward.log" 2>/dev/null && break; sleep 0.1; done
cat "$OUT/forward.log"
echo "\$ echo get http://127.0.0.1:18080/hello   (a request from this machine)"
"$OUT/echo" get --count 4 --new-conn http://127.0.0.1:18080/hello

say "A local process on this machine (the version of api you are working on)"
POD_NAME=my-laptop "$OUT/echo" serve --listen 127.0.0.1:3000 >"$OUT/local.log" 2>&1 &
pids+=($!)

say "kubectl bridge intercept svc/api --header x-owner=me: only my requests reach my laptop"
kubectl-bridge intercept -n "$NS" svc/api --port 80:3000 --header x-owner=me >"$OUT/intercept.log" 2>&1 &
ipid=$!
pids+=($ipid)
for _ in $(seq 600); do grep -q "Tunnel connected" "$OUT/intercept.log" && break; sleep 0.1; done
cat "$OUT/intercept.log"

# The selector switch reaches kube-proxy a moment after the CLI announces it (new connections only).
for _ in $(seq 50); do
  "$KUBECTL" -n "$NS" exec client -- /echo get -H x-owner=me "http://api.$NS.svc.cluster.local/" 2>/dev/null | grep -q my-laptop && break
  sleep 0.2
done
echo
echo "\$ kubectl exec client -- echo get -H x-owner=me http://api/   (my request, from inside the cluster)"
mine=$("$KUBECTL" -n "$NS" exec client -- /echo get --count 3 -H x-owner=me "http://api.$NS.svc.cluster.local/")
echo "$mine"
echo "\$ kubectl exec client -- echo get http://api/                 (a teammate's request)"
theirs=$("$KUBECTL" -n "$NS" exec client -- /echo get --count 3 "http://api.$NS.svc.cluster.local/")
echo "$theirs"
ok=1
[[ "$mine" == *'"pods":{"my-laptop":3}'* ]] || { echo "FAILED: my requests did not all reach my laptop" >&2; ok=0; }
[[ "$theirs" == *'"ok":3'* && "$theirs" != *my-laptop* ]] || { echo "FAILED: a teammate's request reached my laptop" >&2; ok=0; }

say "kubectl bridge list"
kubectl-bridge list -n "$NS"

say "Ctrl-C: the Service is put back as it was"
kill -INT "$ipid"
wait "$ipid" || true
tail -n 2 "$OUT/intercept.log"
"$KUBECTL" -n "$NS" get service api -o jsonpath='selector: {.spec.selector}{"\n"}'

[[ $ok == 1 ]] || exit 1
say "Demo passed. The cluster keeps running (export KUBECONFIG=$KUBECONFIG); 'make cluster-down' stops it."
