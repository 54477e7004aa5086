#!/usr/bin/env bash
# Stops or restarts one component of a running dev cluster with the same command line, ports and
# data (for tests that break things on purpose), or shows what runs.
#
#   deploy/dev/ctl.sh stop|kill|start|restart nats|apiserver|<component> [--state DIR]
#   deploy/dev/ctl.sh status [--state DIR]
#
# Components: etcd authwebhook kube-apiserver (alias apiserver) kube-controller-manager kube-scheduler kwok
# nats. `stop` sends SIGTERM (SIGKILL after 20 s), `kill` SIGKILL (a crash). `start` waits until
# the component is healthy again; starting a running one is a no-op.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_state_arg "$@"
set -- "${ARGS[@]}"
[[ -f "$state/$STATE_MARKER" ]] || die "no dev cluster state in $state"
load_ports || die "$state/ports.env missing"

if [[ "${1:-}" == status ]]; then
  for c in "${COMPONENTS[@]}"; do
    if pid="$(component_pid "$c")"; then printf '%-24s running (pid %s)\n' "$c" "$pid"
    else printf '%-24s stopped\n' "$c"; fi
  done
  exit 0
fi

(($# == 2)) || die "usage: ctl.sh stop|kill|start|restart <component> [--state DIR]  |  ctl.sh status"
action="$1" name="$2"
[[ "$name" == apiserver ]] && name=kube-apiserver
[[ " ${COMPONENTS[*]} " == *" $name "* ]] || die "unknown component: $name (one of: ${COMPONENTS[*]} apiserver)"
[[ -x "$state/cmd/$name.sh" ]] || die "no recorded command line for $name in $state/cmd"

start() {
  if component_pid "$name" >/dev/null; then say "$name already running"; return; fi
  launch "$name"
  wait_healthy "$name"
  say "$name started (pid $(<"$state/pids/$name.pid"))"
}

case "$action" in
  stop) stop_component "$name"; say "$name stopped" ;;
  kill) stop_component "$name" KILL; say "$name killed" ;;
  start) start ;;
  restart) stop_component "$name"; start ;;
  *) die "unknown action: $action (stop|kill|start|restart|status)" ;;
esac
