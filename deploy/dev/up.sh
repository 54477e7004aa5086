#!/usr/bin/env bash
# Starts a local development cluster and NATS, loopback only, no Docker:
#   etcd -> authwebhook (scoped test tokens) -> kube-apiserver (RBAC behind a token-scope
#   webhook authorizer, static-token users, ServiceAccount tokens) -> CRDs from
#   deploy/crds/ -> kube-controller-manager -> kube-scheduler -> kwok (one fake node; pods reach
#   Running, Job pods Succeeded) ; nats-server with JetStream.
#
#   deploy/dev/up.sh [--state DIR]     default DIR: $AMBIENT_STATE_DIR or <repo>/.run/dev
#
# Idempotent: if DIR already holds a healthy cluster it only prints how to use it; a stale DIR
# (a previous run that died) is cleaned and started fresh. Builds missing binaries first
# (deploy/dev/build.sh). Stop with deploy/dev/down.sh; stop/start NATS or the API server alone
# with deploy/dev/ctl.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_state_arg "$@"
((${#ARGS[@]} == 0)) || die "unknown arguments: ${ARGS[*]} (usage: up.sh [--state DIR])"
# The env file holds plain `export VAR=value` lines; keep paths free of spaces and quotes.
[[ "$state" =~ ^[A-Za-z0-9_./+@-]+$ ]] || die "state dir must be a plain path (letters, digits, _ . / + @ -): $state"

usage() {
  # shellcheck source=/dev/null
  source "$state/env"
  cat <<EOF

Dev cluster and NATS are running (state: $state).

  source $state/env                    # KUBECONFIG (admin), AMBIENT_* variables
  $AMBIENT_BIN_DIR/kubectl get nodes
  kubectl with another user:  --kubeconfig $AMBIENT_KUBECONFIG_DIR/<admin|alice|bob|carol|alice-scoped|alice-full>.yaml

  API server   $AMBIENT_APISERVER_URL   (CA: $AMBIENT_CA_FILE)
  NATS         $AMBIENT_NATS_URL   (JetStream; monitoring $AMBIENT_NATS_MONITOR_URL)

  users (static bearer tokens; groups; all also get system:authenticated)
    admin  system:masters   AMBIENT_TOKEN_ADMIN=$AMBIENT_TOKEN_ADMIN
    alice  team-a           AMBIENT_TOKEN_ALICE=$AMBIENT_TOKEN_ALICE
    bob    team-b           AMBIENT_TOKEN_BOB=$AMBIENT_TOKEN_BOB
    carol  (no group)       AMBIENT_TOKEN_CAROL=$AMBIENT_TOKEN_CAROL
  scoped tokens (webhook authenticator deploy/dev/authwebhook.py; OpenShift token scopes)
    alice  [user:info]      AMBIENT_TOKEN_ALICE_SCOPED=$AMBIENT_TOKEN_ALICE_SCOPED
    alice  [user:full]      AMBIENT_TOKEN_ALICE_FULL=$AMBIENT_TOKEN_ALICE_FULL

  logs: $state/logs/    stop: deploy/dev/down.sh --state $state
EOF
}

# ---- already running? stale? ----------------------------------------------------------------
if [[ -e "$state" ]]; then
  if cluster_healthy; then
    say "a healthy cluster is already running in $state"
    usage
    exit 0
  fi
  if [[ -f "$state/$STATE_MARKER" ]]; then
    say "stale state in $state: killing what is left and starting fresh"
    stop_all KILL
    rm -rf "$state"
  elif [[ -n "$(ls -A "$state")" ]]; then
    die "$state exists, is not empty and is not a dev-cluster state directory; refusing to touch it"
  fi
fi

# ---- binaries -----------------------------------------------------------------------------------
say "building/checking binaries (deploy/dev/build.sh)"
"$dev_dir/build.sh" >/dev/null
bin="$(devcluster_bin_dir)"
stages="$(devcluster_cache_dir)/stages"
nats_bin="$(nats_server_bin)"
kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig/admin.yaml")

t0=$SECONDS
umask 077
mkdir -p "$state"/{pids,logs,cmd,pki,auth,kubeconfig,etcd,nats,kwok}
touch "$state/$STATE_MARKER"

# If anything below fails, stop what was started; the logs stay in $state for a look.
ok=0
on_exit() {
  if ((!ok)); then
    say "start failed; stopping the components started so far (logs kept in $state/logs)"
    stop_all
  fi
}
trap on_exit EXIT

# ---- ports: free loopback ports below the ephemeral range, so that no outgoing connection can
# take one while its server is down (ctl.sh restarts reuse them) --------------------------------
read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT SCHEDULER_PORT NATS_PORT NATS_MONITOR_PORT < <(
  python3 - <<'EOF'
import random, socket
lo, hi = 20000, 32000
try:
    lo_eph = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    hi = min(hi, lo_eph - 1)
except OSError:
    pass
ports = []
while len(ports) < 7:
    p = random.randint(lo, hi)
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        ports.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(*ports)
EOF
)
cat >"$state/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
SCHEDULER_PORT=$SCHEDULER_PORT
NATS_PORT=$NATS_PORT
NATS_MONITOR_PORT=$NATS_MONITOR_PORT
EOF
server="https://127.0.0.1:$APISERVER_PORT"

# ---- PKI: a CA, a serving certificate for 127.0.0.1/localhost, a ServiceAccount signing key ---
say "generating PKI and tokens"
pki="$state/pki"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=ambient-dev-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
cat >"$pki/apiserver.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1
EOF
openssl x509 -req -sha256 -days 365 -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
  -CAcreateserial -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# ---- users: static bearer tokens (token,user,uid,"groups") ------------------------------------
declare -A TOKEN
for u in admin alice bob carol; do TOKEN[$u]="$(openssl rand -hex 24)"; done
cat >"$state/auth/tokens.csv" <<EOF
${TOKEN[admin]},admin,uid-admin,"system:masters"
${TOKEN[alice]},alice,uid-alice,"team-a"
${TOKEN[bob]},bob,uid-bob,"team-b"
${TOKEN[carol]},carol,uid-carol
EOF
for u in admin alice bob carol; do
  cat >"$state/kubeconfig/$u.yaml" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ambient-dev
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $u
  user:
    token: ${TOKEN[$u]}
contexts:
- name: $u@ambient-dev
  context:
    cluster: ambient-dev
    user: $u
    namespace: default
current-context: $u@ambient-dev
EOF
done

# ---- scoped tokens: a test authenticator and a scope authorizer --------------------------------
# A static-token user cannot carry `extra`, so tokens scoped as OpenShift scopes them come from a
# token webhook, deploy/dev/authwebhook.py (loopback, TLS from the dev CA, tokens random per
# cluster in auth/webhook-tokens.json). The same process is a webhook authorizer placed before
# RBAC by a structured authorization config: its matchCondition calls it only when the user
# carries `scopes.authorization.openshift.io`, so every other request goes to RBAC as before. It
# denies what the scopes do not cover (`user:info`: nothing in any project) and has no opinion on
# the rest (`user:full`: RBAC decides). `--authorization-config` replaces
# `--authorization-mode=RBAC` (the flags are exclusive; RBAC was the only mode). A ServiceAccount
# token bound to a pod carries real extra too, but RBAC ignores it: it would show that extra
# travels, not that it is enforced.
#   AMBIENT_TOKEN_ALICE_SCOPED   alice (team-a), scopes [user:info]
#   AMBIENT_TOKEN_ALICE_FULL     alice (team-a), scopes [user:full]
declare -A SCOPED
setup_scoped_tokens() {
  local auth="$state/auth" py path k
  AUTHWEBHOOK_PORT="$(python3 - "$state/ports.env" <<'PY'
import random, socket, sys
taken = {int(l.split("=")[1]) for l in open(sys.argv[1]) if "=" in l}
while True:
    p = random.randint(20000, 32000)
    if p in taken:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
PY
)"
  echo "AUTHWEBHOOK_PORT=$AUTHWEBHOOK_PORT" >>"$state/ports.env"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=ambient-dev-authwebhook" \
    -keyout "$pki/authwebhook.key" -out "$pki/authwebhook.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1" >"$pki/authwebhook.ext"
  openssl x509 -req -sha256 -days 365 -in "$pki/authwebhook.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -extfile "$pki/authwebhook.ext" -out "$pki/authwebhook.crt" 2>/dev/null
  SCOPED[alice_scoped]="$(openssl rand -hex 24)"
  SCOPED[alice_full]="$(openssl rand -hex 24)"
  cat >"$auth/webhook-tokens.json" <<JSON
[
  {"token": "${SCOPED[alice_scoped]}", "user": {"username": "alice", "uid": "uid-alice", "groups": ["team-a"],
   "extra": {"scopes.authorization.openshift.io": ["user:info"]}}},
  {"token": "${SCOPED[alice_full]}", "user": {"username": "alice", "uid": "uid-alice", "groups": ["team-a"],
   "extra": {"scopes.authorization.openshift.io": ["user:full"]}}}
]
JSON
  for path in authenticate authorize; do
    cat >"$auth/webhook-$path.yaml" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: authwebhook
  cluster:
    server: https://127.0.0.1:$AUTHWEBHOOK_PORT/$path
    certificate-authority: $pki/ca.crt
users:
- name: kube-apiserver
  user: {}
contexts:
- name: webhook
  context: {cluster: authwebhook, user: kube-apiserver}
current-context: webhook
YAML
  done
  # failurePolicy Deny: if the webhook cannot answer, a scoped request is refused, never let
  # through to RBAC with the user's full rights.
  cat >"$auth/authorization-config.yaml" <<YAML
apiVersion: apiserver.config.k8s.io/v1
kind: AuthorizationConfiguration
authorizers:
- type: Webhook
  name: token-scopes.ambient.dev
  webhook:
    timeout: 3s
    authorizedTTL: 60s
    unauthorizedTTL: 60s
    subjectAccessReviewVersion: v1
    matchConditionSubjectAccessReviewVersion: v1
    failurePolicy: Deny
    connectionInfo:
      type: KubeConfigFile
      kubeConfigFile: $auth/webhook-authorize.yaml
    matchConditions:
    - expression: "'scopes.authorization.openshift.io' in request.extra"
- type: RBAC
  name: rbac
YAML
  for k in alice_scoped alice_full; do
    sed -e "s|^    token: .*|    token: ${SCOPED[$k]}|" -e "s|alice|${k//_/-}|g" \
      "$state/kubeconfig/alice.yaml" >"$state/kubeconfig/${k//_/-}.yaml"
  done
  py="$(python3 -c 'import sys; print(sys.executable)')"
  write_cmd authwebhook "$py" "$dev_dir/authwebhook.py" --listen "127.0.0.1:$AUTHWEBHOOK_PORT" \
    --cert "$pki/authwebhook.crt" --key "$pki/authwebhook.key" --tokens "$auth/webhook-tokens.json"
}
setup_scoped_tokens

# ---- command lines ------------------------------------------------------------------------------
write_cmd etcd "$bin/etcd" \
  --name=dev --data-dir="$state/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="dev=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level=warn

write_cmd kube-apiserver "$bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
  --endpoint-reconciler-type=none \
  --cert-dir="$pki" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --authorization-config="$state/auth/authorization-config.yaml" --token-auth-file="$state/auth/tokens.csv" \
  --authentication-token-webhook-config-file="$state/auth/webhook-authenticate.yaml" \
  --authentication-token-webhook-version=v1 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true --profiling=false --v=1 \
  --shutdown-watch-termination-grace-period=2s

# Client rate limits as a production control plane sets them: the defaults (20 requests/s for
# the whole controller manager, 5 Jobs synced at once) let the Job controller start about four
# runner Jobs a second, which would make the cluster, not the control plane, the bottleneck.
write_cmd kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$state/kubeconfig/admin.yaml" \
  --controllers='*' --leader-elect=false \
  --kube-api-qps=300 --kube-api-burst=600 --concurrent-job-syncs=50 \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
  --profiling=false --v=1

write_cmd kube-scheduler "$bin/kube-scheduler" \
  --kubeconfig="$state/kubeconfig/admin.yaml" --leader-elect=false \
  --kube-api-qps=300 --kube-api-burst=600 \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --profiling=false --v=1

# kwok: the Stages it plays (copied from its module by build.sh), one multi-document config.
: >"$state/kwok/stages.yaml"
for f in node-initialize node-heartbeat-with-lease pod-ready pod-delete; do
  [[ -s "$stages/$f.yaml" ]] || die "kwok stage $stages/$f.yaml missing; re-run deploy/dev/build.sh"
  { echo '---'; cat "$stages/$f.yaml"; } >>"$state/kwok/stages.yaml"
done
# Our own Job-pod stages (deploy/dev/kwok/): a run duration and an exit code chosen by the
# pod's environment (KWOK_RUN_DURATION, KWOK_EXIT_CODE), so tests can make runners slow or fail.
for f in "$dev_dir"/kwok/*.yaml; do
  { echo '---'; cat "$f"; } >>"$state/kwok/stages.yaml"
done
write_cmd kwok "$bin/kwok" \
  --kubeconfig="$state/kubeconfig/admin.yaml" --config="$state/kwok/stages.yaml" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --manage-nodes-with-label-selector= --node-lease-duration-seconds=40 \
  --cidr=10.244.0.0/16 --node-ip=127.0.0.1

# NATS: every acknowledged JetStream publish is fsynced before the ack (sync_interval: always).
# JetStream reserves each stream's max_bytes up front (18 GiB for the bus), and its default
# limit is 75% of the disk that is free at start, so a fuller disk would refuse the streams:
# set the limit explicitly (dev data stays tiny; the limit is not allocated).
cat >"$state/nats/nats.conf" <<EOF
server_name: ambient-dev
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MONITOR_PORT
jetstream {
  store_dir: "$state/nats/store"
  sync_interval: always
  max_file_store: 64GB
}
EOF
write_cmd nats "$nats_bin" -js -c "$state/nats/nats.conf"

# ---- start ---------------------------------------------------------------------------------------
say "starting etcd and nats"
launch etcd
launch nats
launch authwebhook
wait_healthy etcd
wait_healthy authwebhook
say "starting kube-apiserver on $server"
launch kube-apiserver
wait_healthy kube-apiserver

shopt -s nullglob
crds=("$repo_dir"/deploy/crds/*.yaml)
shopt -u nullglob
if ((${#crds[@]})); then
  say "installing ${#crds[@]} CRD file(s) from deploy/crds/"
  for f in "${crds[@]}"; do
    "${kubectl[@]}" apply --server-side --force-conflicts -f "$f" >/dev/null
  done
  "${kubectl[@]}" wait --for=condition=Established crd --all --timeout=120s >/dev/null
fi

say "starting kube-controller-manager, kube-scheduler, kwok"
launch kube-controller-manager
launch kube-scheduler
launch kwok
wait_healthy kube-controller-manager
wait_healthy kube-scheduler
wait_healthy kwok

"${kubectl[@]}" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-0
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "10000", ephemeral-storage: 100Ti}
  capacity: {cpu: "1000", memory: 4Ti, pods: "10000", ephemeral-storage: 100Ti}
EOF
node_ready() { "${kubectl[@]}" get node kwok-node-0 -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -qx True; }
wait_until kwok 120 "node kwok-node-0 Ready" node_ready
wait_healthy nats

# ---- env file ------------------------------------------------------------------------------------
{
  echo "# Generated by deploy/dev/up.sh: source it to use the dev cluster and NATS."
  echo "export KUBECONFIG=$state/kubeconfig/admin.yaml"
  echo "export AMBIENT_STATE_DIR=$state"
  echo "export AMBIENT_BIN_DIR=$bin"
  echo "export AMBIENT_KUBECONFIG_DIR=$state/kubeconfig"
  echo "export AMBIENT_APISERVER_URL=$server"
  echo "export AMBIENT_CA_FILE=$pki/ca.crt"
  for u in admin alice bob carol; do echo "export AMBIENT_TOKEN_${u^^}=${TOKEN[$u]}"; done
  for k in alice_scoped alice_full; do echo "export AMBIENT_TOKEN_${k^^}=${SCOPED[$k]}"; done
  echo "export AMBIENT_NATS_URL=nats://127.0.0.1:$NATS_PORT"
  echo "export AMBIENT_NATS_MONITOR_URL=http://127.0.0.1:$NATS_MONITOR_PORT"
} >"$state/env.tmp"
mv "$state/env.tmp" "$state/env"   # written last: its presence means "started"
ok=1
say "cluster and NATS ready in $((SECONDS - t0))s"
usage
