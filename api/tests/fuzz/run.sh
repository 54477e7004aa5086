#!/usr/bin/env bash
# Fuzzes a running api from its own /openapi.json with schemathesis: no input may cause a 5xx
# (check not_a_server_error). Needs `pip install schemathesis==4.32.5`.
#
# Usage: api/tests/fuzz/run.sh <api-url> <bearer-token> [max-examples-per-operation]
# The SSE streams (…/events) never end and are left out. Run it against an api started with a
# generous --rate-limit-rps/--rate-limit-burst and --pre-auth-rate-limit-rps/-burst and a short
# --messages-max-wait, or most requests only exercise the 429 path and the long-poll.
set -euo pipefail
url=${1:?usage: run.sh <api-url> <bearer-token> [max-examples]}
token=${2:?usage: run.sh <api-url> <bearer-token> [max-examples]}
examples=${3:-${FUZZ_MAX_EXAMPLES:-20}}
exec python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())' run \
  "$url/openapi.json" \
  --checks not_a_server_error \
  --header "Authorization: Bearer $token" \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --exclude-path-regex '/events$' \
  --request-timeout 30 \
  --workers 1 \
  --seed "${FUZZ_SEED:-1}" \
  --generation-database none \
  --no-color
