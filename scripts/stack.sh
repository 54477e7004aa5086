#!/usr/bin/env bash
# THE "bring up the local stack" command.
#
#   scripts/stack.sh [up] [--state DIR]    start (or show) the local stack and print how to use it
#   scripts/stack.sh down [--state DIR]    stop it and remove its state
#   scripts/stack.sh status [--state DIR]  which processes run
#
# DIR defaults to $AMBIENT_STATE_DIR, then .run/dev. Today the stack is the dev cluster
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok), NATS JetStream and the
# demo users; the api, reconciler and projector services are not started yet (see below).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export GOTOOLCHAIN=local

cmd="${1:-up}"
[[ $# -gt 0 && "$1" != --* ]] && shift

case "$cmd" in
  up)
    deploy/dev/up.sh "$@"
    echo "  stop everything: scripts/stack.sh down $*"
    # ---- SERVICES: start api, reconciler and projector here (against `source <state>/env`),
    # ---- record their PIDs under <state>/pids/ and print their URLs. Not implemented yet.
    ;;
  down)
    # ---- SERVICES: stop api, reconciler and projector here, before the cluster.
    deploy/dev/down.sh "$@"
    ;;
  status)
    deploy/dev/ctl.sh status "$@"
    ;;
  *)
    echo "usage: scripts/stack.sh [up|down|status] [--state DIR]" >&2
    exit 2
    ;;
esac
