#!/usr/bin/env bash
# Generates a TypeScript client from a running api's own /openapi.json (openapi-typescript 7,
# which reads OpenAPI 3.1; requests through openapi-fetch), type-checks the user story
# (story.ts) against it with tsc, and runs it against that api. A document that disagrees with
# the story's use of it fails the build; an api that disagrees with its document fails the run.
#
# Usage: api/tests/client/run.sh <api-url> <owner-token> <other-user-name>
# Needs node and npm (packages pinned by package-lock.json, installed under target/client-story).
set -euo pipefail
url=${1:?usage: run.sh <api-url> <owner-token> <other-user-name>}
token=${2:?usage: run.sh <api-url> <owner-token> <other-user-name>}
other=${3:?usage: run.sh <api-url> <owner-token> <other-user-name>}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${CLIENT_STORY_DIR:-$here/../../../target/client-story}"
mkdir -p "$work/build"
cp "$here/package.json" "$here/package-lock.json" "$here/tsconfig.json" "$here/story.ts" "$work/"
cd "$work"
echo "==> npm ci (in $work)"
npm ci --no-audit --no-fund --loglevel=error
echo "==> generating the client from $url/openapi.json"
npx --no-install openapi-typescript "$url/openapi.json" -o build/api.d.ts
echo "==> type-checking the story against it"
npx --no-install tsc -p tsconfig.json
echo "==> running the story"
node build/dist/story.js "$url" "$token" "$other"
