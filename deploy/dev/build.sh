#!/usr/bin/env bash
# Builds the dev cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from their published Go modules into a versioned cache
# outside the repository. Skips everything that is already built.
#
#   deploy/dev/build.sh            # build what is missing, print the bin directory last
#
# The first build takes ~20-40 minutes on 2 cores; afterwards it is instant. Concurrent
# invocations serialise on a lock file in the cache directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.env"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
bin="$(devcluster_bin_dir)"
mkdir -p "$bin"
start=$SECONDS

step() { printf '[build %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

# One build at a time per cache directory: a second invocation (another terminal, a parallel
# test run) waits for the first and then finds everything cached. The lock is released when
# this script exits.
exec 9>"$(devcluster_cache_dir)/build.lock"
if ! flock -n 9; then
  step "another build holds $(devcluster_cache_dir)/build.lock; waiting for it to finish"
  flock 9
fi

# Runs a long command while printing a heartbeat, so a cold build shows it is alive.
with_heartbeat() {
  local what="$1"; shift
  "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && step "$what: still building…"
  done
  wait "$pid"
}

# The wrapper modules are generated in the cache (not the repo): go.mod files that the go
# command writes are an artefact of the versions pinned in versions.env.
work="$(devcluster_cache_dir)/src"
mkdir -p "$work"

build_etcd() {
  [[ -x "$bin/etcd" ]] && { step "etcd $ETCD_VERSION: cached"; return; }
  step "etcd $ETCD_VERSION: resolving modules"
  local d="$work/etcd"
  rm -rf "$d" && mkdir -p "$d" && cd "$d"
  cp "$here/go/etcd/go.mod.in" go.mod
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
  step "etcd $ETCD_VERSION: compiling"
  with_heartbeat etcd go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$bin/etcd.tmp" "$bin/etcd"
  step "etcd: done"
}

build_k8s() {
  local all=1 c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$bin/$c" ]] || all=0
  done
  ((all)) && { step "kubernetes $K8S_VERSION: cached"; return; }
  local d="$work/k8s" staging="v0.${K8S_VERSION#v1.}"
  rm -rf "$d" && mkdir -p "$d" && cd "$d"
  cp "$here/go/k8s/go.mod.in" go.mod
  step "kubernetes $K8S_VERSION: reading the release's go.mod for its staging modules"
  go mod download "k8s.io/kubernetes@$K8S_VERSION"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  # Every staging module the release requires at the placeholder v0.0.0 gets replaced by its
  # published twin v0.N.P: the same code, tagged for consumers.
  local mods
  mods="$(grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}')"
  [[ -n "$mods" ]] || { echo "no staging modules found in $gomod" >&2; exit 1; }
  local m
  for m in $mods; do go mod edit "-replace=$m=$m@$staging"; done
  step "kubernetes $K8S_VERSION: $(wc -w <<<"$mods") staging modules replaced by $staging; resolving"
  with_heartbeat "go get" go get -tool \
    "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" >/dev/null
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  ld+=" -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$bin/$c" ]] && continue
    step "kubernetes $K8S_VERSION: compiling $c"
    with_heartbeat "$c" go build -trimpath -ldflags "$ld" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$bin/$c.tmp" "$bin/$c"
    step "$c: done"
  done
}

build_kwok() {
  if [[ -x "$bin/kwok" ]]; then
    step "kwok $KWOK_VERSION: cached"
  else
    step "kwok $KWOK_VERSION: compiling"
    with_heartbeat kwok env GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
    step "kwok: done"
  fi
}

# kwok ships its Stage definitions as YAML inside its module (kwokctl embeds them; plain kwok
# needs them in its --config). Copy the ones up.sh uses, by name: each file is one Stage.
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)
copy_kwok_stages() {
  local dest="$bin/../stages" f missing=0
  for f in "${KWOK_STAGES[@]}"; do [[ -s "$dest/$(basename "$f")" ]] || missing=1; done
  # Exactly the listed files, nothing else (older versions of this script copied more).
  [[ "$(ls "$dest" 2>/dev/null | wc -l)" == "${#KWOK_STAGES[@]}" ]] || missing=1
  ((missing)) || { step "kwok stages: cached"; return; }
  local src
  src="$(cd "$work" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"
  [[ -d "$src/kustomize/stage" ]] || { echo "kwok module has no kustomize/stage dir: '$src'" >&2; exit 1; }
  rm -rf "$dest" && mkdir -p "$dest"
  for f in "${KWOK_STAGES[@]}"; do
    [[ -f "$src/kustomize/stage/$f" ]] || { echo "kwok $KWOK_VERSION has no stage $f" >&2; exit 1; }
    cp -f "$src/kustomize/stage/$f" "$dest/"
    chmod u+w "$dest/$(basename "$f")"
  done
  step "kwok stages: ${#KWOK_STAGES[@]} copied to $dest"
}

build_etcd
build_k8s
build_kwok
copy_kwok_stages
step "all binaries in $bin"
echo "$bin"
