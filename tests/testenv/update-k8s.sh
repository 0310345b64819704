#!/usr/bin/env bash
# Pins k8s.io/kubernetes (and every k8s.io/* staging module it requires as
# v0.0.0) to one Kubernetes release, then tidies go.mod/go.sum.
#
#   ./update-k8s.sh [1.36.3]
#
# k8s.io/kubernetes' own go.mod requires its staging modules as v0.0.0 and
# replaces them with ./staging/...; a consumer must replace them with the
# published v0.X.Y tags, which is what this generates.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${1:-1.36.3}"
STAGING_VERSION="v0.${K8S_VERSION#1.}"
ETCD_MODULE=go.etcd.io/etcd/server/v3

modfile="$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
staging="$(awk '$2 == "v0.0.0" && $1 ~ /^k8s.io\// {print $1}' "$modfile" | sort -u)"
# Use exactly the etcd version Kubernetes itself builds against.
etcd_version="$(awk -v m="$ETCD_MODULE" '$1 == m {print $2}' "$modfile")"

args=(-require="k8s.io/kubernetes@v${K8S_VERSION}" -require="${ETCD_MODULE}@${etcd_version}")
for m in $staging; do
  args+=(-replace="${m}=${m}@${STAGING_VERSION}")
done
go mod edit "${args[@]}"
go get -tool k8s.io/kubernetes/cmd/kubectl
go mod tidy
echo "pinned k8s.io/kubernetes v${K8S_VERSION}, $(echo "$staging" | wc -l) staging modules at ${STAGING_VERSION}, etcd ${etcd_version}" >&2
