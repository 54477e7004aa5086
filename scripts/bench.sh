#!/usr/bin/env bash
# The benchmark: builds the services optimized, brings up a fresh dev cluster and NATS, starts
# the control plane on it, loads it, and prints a markdown table where every figure stands
# beside a baseline measured in the same run (JSON in target/bench/report.json).
#
#   scripts/bench.sh            full mode (tens of minutes: 1 000 projects, 60 s per rate)
#   scripts/bench.sh --quick    smoke mode (a few minutes; what CI runs)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export GOTOOLCHAIN=local
state="$(realpath -m "${AMBIENT_BENCH_STATE_DIR:-$repo/target/bench-cluster}")"

deploy/dev/build.sh >/dev/null
echo "==> cargo build --release (services and benchmark)" >&2
cargo build --release --locked --bins -p api -p reconciler -p projector -p ambient-tests >&2

[[ -e "$state" ]] && deploy/dev/down.sh --state "$state"
trap 'deploy/dev/down.sh --state "$state" >/dev/null 2>&1 || true' EXIT
deploy/dev/up.sh --state "$state" >/dev/null
export AMBIENT_STATE_DIR="$state" AMBIENT_SERVICE_PROFILE=release
"${CARGO_TARGET_DIR:-$repo/target}/release/ambient-bench" "$@"
