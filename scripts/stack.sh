#!/usr/bin/env bash
# THE "bring up the local stack" command.
#
#   scripts/stack.sh [up] [--state DIR] [--release] [--ha]   start (or show) the local stack, print how to use it
#   scripts/stack.sh down [--state DIR]               stop it and remove its state
#   scripts/stack.sh status [--state DIR]             which processes run
#
# DIR defaults to $AMBIENT_STATE_DIR, then .run/dev. The stack is the dev cluster (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok), NATS JetStream, the demo
# users, and the api, reconciler and projector, each under its deploy/ ServiceAccount.
# `--release` builds the services optimized (a slower first build). `--ha` runs the production
# topology instead: three clustered NATS servers (every stream and bucket at three replicas) and
# two replicas of every service (state dir default .run/ha).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export GOTOOLCHAIN=local

cmd=up
if [[ $# -gt 0 && "$1" != --* ]]; then cmd="$1"; shift; fi

state="$(realpath -m "${AMBIENT_STATE_DIR:-.run/dev}")"
cluster_args=()
while (($#)); do
  case "$1" in
    --state) state="$(realpath -m "$2")"; shift 2 ;;
    --state=*) state="$(realpath -m "${1#--state=}")"; shift ;;
    --release) release=--release; shift ;;
    --ha) ha=--ha; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -n "${ha:-}" && -z "${AMBIENT_STATE_DIR:-}" && "$state" == "$(realpath -m .run/dev)" ]]; then
  state="$(realpath -m .run/ha)"
fi
cluster_args=(--state "$state")

case "$cmd" in
  up)
    deploy/dev/up.sh "${cluster_args[@]}"
    deploy/dev/services.sh up "${cluster_args[@]}" ${release:-} ${ha:-}
    # shellcheck source=/dev/null
    source "$state/env"
    cat <<EOF

  The control plane runs:
    api          $AMBIENT_API_URL   (OpenAPI: $AMBIENT_API_URL/openapi.json)
    reconciler, projector            logs: $state/logs/
EOF
    if [[ -n "${ha:-}" ]]; then
      cat <<EOF
    HA topology: NATS servers $AMBIENT_HA_NATS_URL (3 replicas of everything);
    api-1 $AMBIENT_API_URL, api-2 $AMBIENT_API_URL_2 (use either); 2 reconcilers, 2 projectors
EOF
    fi
    cat <<EOF

  Try it (source $state/env first; alice is in group team-a, bob in team-b, carol in none):
    curl -s -H "Authorization: Bearer \$AMBIENT_TOKEN_ALICE" \$AMBIENT_API_URL/api/me
    curl -s -H "Authorization: Bearer \$AMBIENT_TOKEN_ALICE" -H 'Content-Type: application/json' \\
         -d '{"name":"team-a-demo","displayName":"Team A"}' \$AMBIENT_API_URL/api/projects
    curl -s -H "Authorization: Bearer \$AMBIENT_TOKEN_ALICE" -H 'Content-Type: application/json' \\
         -d '{"name":"hello","prompt":"Say hello"}' \$AMBIENT_API_URL/api/projects/team-a-demo/agentic-sessions
    curl -sN -H "Authorization: Bearer \$AMBIENT_TOKEN_ALICE" \$AMBIENT_API_URL/api/projects/team-a-demo/events

  stop everything: scripts/stack.sh down --state $state
EOF
    ;;
  down)
    if [[ -d "$state" ]]; then deploy/dev/services.sh down "${cluster_args[@]}"; fi
    deploy/dev/down.sh "${cluster_args[@]}"
    ;;
  status)
    deploy/dev/ctl.sh status "${cluster_args[@]}"
    ;;
  *)
    echo "usage: scripts/stack.sh [up|down|status] [--state DIR] [--release]" >&2
    exit 2
    ;;
esac
