#!/usr/bin/env bash
# Fuzzes a running api from its own /openapi.json with schemathesis: no input may cause a 5xx
# (not_a_server_error), and every answer must be one the document declares, with the declared
# content type, headers and body schema (the conformance checks): a handler and its document
# cannot disagree. Needs `pip install schemathesis==4.32.5`.
#
# Usage: api/tests/fuzz/run.sh <api-url> <bearer-token> [max-examples-per-operation]
# The SSE streams (/api/projects/…/events) never end and are left out. Run it against an api started with a
# generous --rate-limit-rps/--rate-limit-burst and --pre-auth-rate-limit-rps/-burst and a short
# --messages-max-wait, or most requests only exercise the 429 path and the long-poll.
#
# With FUZZ_PROJECT and FUZZ_SESSION (an existing project and interactive session of the token's
# user), every path names them, so that generated bodies reach the handlers instead of a 404;
# the deletions of that project and session are left out so that both stay for the whole run.
set -euo pipefail
url=${1:?usage: run.sh <api-url> <bearer-token> [max-examples]}
token=${2:?usage: run.sh <api-url> <bearer-token> [max-examples]}
examples=${3:-${FUZZ_MAX_EXAMPLES:-20}}
config=()
fixed=()
if [[ -n "${FUZZ_PROJECT:-}" ]]; then
  file="$(mktemp -t schemathesis.XXXXXX.toml)"
  trap 'rm -f "$file"' EXIT
  printf '[parameters]\n"path.project" = "%s"\n"path.session" = "%s"\n' \
    "$FUZZ_PROJECT" "${FUZZ_SESSION:?FUZZ_SESSION goes with FUZZ_PROJECT}" > "$file"
  config=(--config-file "$file")
  fixed=(--exclude-operation-id delete_project --exclude-operation-id delete_session)
fi
python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())' "${config[@]}" run \
  "$url/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --header "Authorization: Bearer $token" \
  --phases examples,coverage,fuzzing \
  --max-examples "$examples" \
  --exclude-path-regex '^/api/projects/.*/events$' \
  --request-timeout 30 \
  --workers 1 \
  --seed "${FUZZ_SEED:-1}" \
  --generation-database none \
  --no-color \
  "${fixed[@]}"
