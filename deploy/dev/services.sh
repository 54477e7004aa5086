#!/usr/bin/env bash
# Runs the three services of the control plane on a dev cluster started by up.sh, each under
# the ServiceAccount and RBAC that deploy/ ships (a TokenRequest token), never as admin.
#
#   deploy/dev/services.sh up   [--state DIR] [--release] [--ha]   build, start, wait until ready
#   deploy/dev/services.sh down [--state DIR]                      stop them (the cluster keeps running)
#
# Adds to the state dir: keys/ (bus keys from deploy/gen-secrets.sh), kubeconfig/<service>.yaml,
# cmd/, pids/ and logs/ entries named api, reconciler, projector, and API_URL to env.
#
# --ha runs the production topology instead: three NATS servers clustered on loopback
# (nats-ha-0..2; every stream and bucket at three replicas) and two replicas of each service
# (api-1, api-2, reconciler-1, reconciler-2, projector-1, projector-2; the projectors share one
# Lease). A client may use either api (AMBIENT_API_URL, AMBIENT_API_URL_2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

action="${1:-up}"
[[ $# -gt 0 ]] && shift
parse_state_arg "$@"
profile=debug
ha=false
for a in "${ARGS[@]}"; do
  case "$a" in
    --release) profile=release ;;
    --ha) ha=true ;;
    *) die "unknown argument $a" ;;
  esac
done
if $ha; then
  SERVICES=(projector-1 projector-2 reconciler-1 reconciler-2 api-1 api-2)
else
  SERVICES=(projector reconciler api)
fi

case "$action" in
  down)
    # Whatever runs, single or HA: the apis first, the NATS servers last.
    for pattern in 'api*' 'reconciler*' 'projector*' 'nats-ha-*'; do
      for f in "$state"/pids/$pattern.pid; do
        [[ -e "$f" ]] && stop_component "$(basename "$f" .pid)"
      done
    done
    exit 0
    ;;
  up) ;;
  *) die "usage: services.sh up|down [--state DIR] [--release]" ;;
esac

[[ -f "$state/env" ]] || die "no dev cluster in $state (run deploy/dev/up.sh first)"
# shellcheck source=/dev/null
source "$state/env"
kubectl="$AMBIENT_BIN_DIR/kubectl --kubeconfig=$state/kubeconfig/admin.yaml"

target="${CARGO_TARGET_DIR:-$repo_dir/target}"
say "building the services (cargo build --bins${profile/debug/}; the first build takes minutes)"
cargo_flags=(--locked --bins -p api -p reconciler -p projector)
[[ $profile == release ]] && cargo_flags+=(--release)
(cd "$repo_dir" && cargo build "${cargo_flags[@]}" >&2)

say "applying the components' RBAC (deploy/base/rbac)"
$kubectl apply --server-side --force-conflicts --field-manager=ambient-dev -f "$repo_dir/deploy/base/rbac" >/dev/null
# The API server loads admission policies asynchronously; the reconciler starts only once its
# confinement is in force: a dry-run write as the reconciler outside a project is refused by it.
# (A changed policy counts once the cluster has compiled its generation.)
confined() {
  local out gen
  gen="$($kubectl get validatingadmissionpolicies.v1.admissionregistration.k8s.io ambient-reconciler-confinement \
    -o 'jsonpath={.metadata.generation} {.status.observedGeneration}')" || return 1
  [[ ${gen% *} == "${gen#* }" ]] || return 1
  ! out="$($kubectl --as=system:serviceaccount:ambient-system:ambient-reconciler -n ambient-system \
    create serviceaccount ambient-confinement-probe --dry-run=server 2>&1)" &&
    [[ $out == *ambient-reconciler-confinement* ]]
}
wait_until kube-apiserver 60 "the reconciler's confinement policy (ambient-reconciler-confinement)" confined

if [[ ! -s "$state/keys/sealing.key" ]]; then
  say "generating bus keys (deploy/gen-secrets.sh)"
  "$repo_dir/deploy/gen-secrets.sh" "$state/keys" >/dev/null
fi

# Below the ephemeral range (as up.sh does): no outgoing connection can take the port first.
free_port() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 32000); s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()'
}
# Per-instance shell variable names: api-2 -> API_2.
var() { local v="${1//-/_}"; echo "${v^^}"; }
[[ -f "$state/services.env" ]] || {
  echo "API_PORT=$(free_port)"
  echo "API_2_PORT=$(free_port)"
  for s in projector reconciler api projector-1 projector-2 reconciler-1 reconciler-2 api-1 api-2; do
    echo "$(var "$s")_HEALTH_PORT=$(free_port)"
  done
  for i in 0 1 2; do
    echo "NATS_HA_${i}_PORT=$(free_port) NATS_HA_${i}_ROUTE_PORT=$(free_port) NATS_HA_${i}_MONITOR_PORT=$(free_port)"
  done
} >"$state/services.env"
# shellcheck source=/dev/null
source "$state/services.env"
api_url="http://127.0.0.1:$API_PORT"
nats_url="$AMBIENT_NATS_URL"
replicas=1

if $ha; then
  # Three NATS servers routed to each other on loopback, each with its own store.
  routes=""
  for i in 0 1 2; do
    v="NATS_HA_${i}_ROUTE_PORT"
    routes+="${routes:+, }nats-route://127.0.0.1:${!v}"
  done
  nats_url=""
  for i in 0 1 2; do
    name="nats-ha-$i"
    port="NATS_HA_${i}_PORT"; route="NATS_HA_${i}_ROUTE_PORT"; monitor="NATS_HA_${i}_MONITOR_PORT"
    nats_url+="${nats_url:+,}nats://127.0.0.1:${!port}"
    mkdir -p "$state/nats-ha/$name"
    printf '%s\n' "server_name: $name" "listen: 127.0.0.1:${!port}" "http: 127.0.0.1:${!monitor}" \
      "jetstream { store_dir: \"$state/nats-ha/$name\", sync_interval: always, max_file_store: 64GB }" \
      "cluster { name: ambient-ha, listen: 127.0.0.1:${!route}, routes: [$routes] }" >"$state/nats-ha/$name.conf"
    if ! component_pid "$name" >/dev/null; then
      write_cmd "$name" "$(nats_server_bin)" -c "$state/nats-ha/$name.conf"
      launch "$name"
    fi
  done
  for i in 0 1 2; do
    monitor="NATS_HA_${i}_MONITOR_PORT"
    wait_until "nats-ha-$i" 60 "nats-ha-$i JetStream" curl -sf --max-time 2 "http://127.0.0.1:${!monitor}/healthz"
  done
  say "three NATS servers clustered: $nats_url"
  replicas=3
fi

for s in "${SERVICES[@]}"; do
  if component_pid "$s" >/dev/null; then
    say "$s already runs"
    continue
  fi
  service="${s%-[0-9]}"
  token="$($kubectl -n ambient-system create token "ambient-$service" --duration=24h)"
  kc="$state/kubeconfig/$service.yaml"
  umask 077
  cat >"$kc" <<KC
apiVersion: v1
kind: Config
clusters: [{name: dev, cluster: {server: "$AMBIENT_APISERVER_URL", certificate-authority: "$AMBIENT_CA_FILE"}}]
users: [{name: $service, user: {token: "$token"}}]
contexts: [{name: dev, context: {cluster: dev, user: $service}}]
current-context: dev
KC
  umask 022
  health_var="$(var "$s")_HEALTH_PORT"
  common=("--kubeconfig=$kc" "--nats-url=$nats_url" "--stream-replicas=$replicas"
          "--health-addr=127.0.0.1:${!health_var}" --log-format=json)
  listen="$API_PORT"
  [[ $s == api-2 ]] && listen="$API_2_PORT"
  case "$service" in
    api) extra=("--listen=127.0.0.1:$listen" "--signing-key-file=$state/keys/command-signing.pem"
                "--reconciler-sealing-public-key=$(<"$state/keys/sealing-public-key")") ;;
    reconciler) extra=("--command-verify-keys-file=$state/keys/command-verify.pem"
                       "--sealing-key-file=$state/keys/sealing.key" "--backend-api-url=$api_url/api") ;;
    projector) extra=() ;;
  esac
  write_cmd "$s" "$target/$profile/$service" "${common[@]}" "${extra[@]}"
  launch "$s"
  wait_until "$s" 90 "$s /readyz" curl -sf --max-time 2 "http://127.0.0.1:${!health_var}/readyz"
  say "$s is ready (health http://127.0.0.1:${!health_var}/healthz, log $state/logs/$s.log)"
done

grep -q '^export AMBIENT_API_URL=' "$state/env" || echo "export AMBIENT_API_URL=$api_url" >>"$state/env"
if $ha; then
  grep -q '^export AMBIENT_API_URL_2=' "$state/env" ||
    echo "export AMBIENT_API_URL_2=http://127.0.0.1:$API_2_PORT" >>"$state/env"
  grep -q '^export AMBIENT_HA_NATS_URL=' "$state/env" || echo "export AMBIENT_HA_NATS_URL=$nats_url" >>"$state/env"
fi
