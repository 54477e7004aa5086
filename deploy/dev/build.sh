#!/usr/bin/env bash
# Builds the dev cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from their published Go modules into a versioned cache
# outside the repository. Skips everything that is already built.
#
#   deploy/dev/build.sh            # build what is missing, print the bin directory last
#
# The first build takes ~20-30 minutes on 2 cores; afterwards it is instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/versions.env"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
bin="$(devcluster_bin_dir)"
mkdir -p "$bin"
start=$SECONDS

step() { printf '[build %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

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
  [[ -x "$bin/kwok" ]] && { step "kwok $KWOK_VERSION: cached"; return; }
  step "kwok $KWOK_VERSION: compiling"
  with_heartbeat kwok env GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok ships its Stage definitions as YAML inside the module; keep the ones we use.
  local stages
  stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  mkdir -p "$bin/../stages"
  cp -f "$stages"/node/fast/node-initialize.yaml \
        "$stages"/node/heartbeat-with-lease/*.yaml \
        "$stages"/pod/fast/*.yaml "$bin/../stages/" 2>/dev/null || true
  chmod u+w "$bin/../stages/"*
  step "kwok: done"
}

build_etcd
build_k8s
build_kwok
step "all binaries in $bin"
echo "$bin"
