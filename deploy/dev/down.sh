#!/usr/bin/env bash
# Stops the dev cluster and NATS of a state directory (only the processes up.sh started, found
# by their PID files and checked to still be those programs), waits for them to exit and removes
# the state directory.
#
#   deploy/dev/down.sh [--state DIR]     default DIR: $AMBIENT_STATE_DIR or <repo>/.run/dev
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_state_arg "$@"
((${#ARGS[@]} == 0)) || die "unknown arguments: ${ARGS[*]} (usage: down.sh [--state DIR])"

if [[ ! -e "$state" ]]; then
  say "nothing to stop: $state does not exist"
  exit 0
fi
[[ -f "$state/$STATE_MARKER" ]] || die "$state is not a dev-cluster state directory; refusing to touch it"
say "stopping the components of $state"
stop_all
rm -rf "$state"
say "stopped; removed $state"
