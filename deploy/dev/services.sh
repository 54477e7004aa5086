#!/usr/bin/env bash
# Runs the three services of the control plane on a dev cluster started by up.sh, each under
# the ServiceAccount and RBAC that deploy/ ships (a TokenRequest token), never as admin.
#
#   deploy/dev/services.sh up   [--state DIR] [--release]   build, start, wait until healthy
#   deploy/dev/services.sh down [--state DIR]               stop them (the cluster keeps running)
#
# Adds to the state dir: keys/ (bus keys from deploy/gen-secrets.sh), kubeconfig/<service>.yaml,
# cmd/, pids/ and logs/ entries named api, reconciler, projector, and API_URL to env.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

action="${1:-up}"
[[ $# -gt 0 ]] && shift
parse_state_arg "$@"
profile=debug
for a in "${ARGS[@]}"; do
  case "$a" in
    --release) profile=release ;;
    *) die "unknown argument $a" ;;
  esac
done
SERVICES=(projector reconciler api)

case "$action" in
  down)
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop_component "${SERVICES[i]}"; done
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
[[ -f "$state/services.env" ]] || {
  echo "API_PORT=$(free_port)"
  for s in "${SERVICES[@]}"; do echo "${s^^}_HEALTH_PORT=$(free_port)"; done
} >"$state/services.env"
# shellcheck source=/dev/null
source "$state/services.env"
api_url="http://127.0.0.1:$API_PORT"

for s in "${SERVICES[@]}"; do
  if component_pid "$s" >/dev/null; then
    say "$s already runs"
    continue
  fi
  token="$($kubectl -n ambient-system create token "ambient-$s" --duration=24h)"
  kc="$state/kubeconfig/$s.yaml"
  umask 077
  cat >"$kc" <<KC
apiVersion: v1
kind: Config
clusters: [{name: dev, cluster: {server: "$AMBIENT_APISERVER_URL", certificate-authority: "$AMBIENT_CA_FILE"}}]
users: [{name: $s, user: {token: "$token"}}]
contexts: [{name: dev, context: {cluster: dev, user: $s}}]
current-context: dev
KC
  umask 022
  health_var="${s^^}_HEALTH_PORT"
  common=("--kubeconfig=$kc" "--nats-url=$AMBIENT_NATS_URL" "--health-addr=127.0.0.1:${!health_var}" --log-format=json)
  case "$s" in
    api) extra=("--listen=127.0.0.1:$API_PORT" "--signing-key-file=$state/keys/command-signing.pem"
                "--reconciler-sealing-public-key=$(<"$state/keys/sealing-public-key")") ;;
    reconciler) extra=("--command-verify-keys-file=$state/keys/command-verify.pem"
                       "--sealing-key-file=$state/keys/sealing.key" "--backend-api-url=$api_url/api") ;;
    projector) extra=() ;;
  esac
  write_cmd "$s" "$target/$profile/$s" "${common[@]}" "${extra[@]}"
  launch "$s"
  wait_until "$s" 60 "$s /healthz" curl -sf --max-time 2 "http://127.0.0.1:${!health_var}/healthz"
  say "$s is up (health http://127.0.0.1:${!health_var}/healthz, log $state/logs/$s.log)"
done

grep -q '^export AMBIENT_API_URL=' "$state/env" || echo "export AMBIENT_API_URL=$api_url" >>"$state/env"
