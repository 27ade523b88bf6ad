#!/usr/bin/env bash
# Build every FlexTrain image with one command (docker-bake.json):
#
#   operator       REGISTRY/flextrain-operator:VERSION   linux/amd64, linux/arm64
#   trainer-cpu    REGISTRY/flextrain:VERSION-cpu        linux/amd64, linux/arm64 (CPU-only torch)
#   trainer-cuda   REGISTRY/flextrain:VERSION-cuda       linux/amd64 (torch with CUDA 13.0)
#
# VERSION is always the chart's appVersion (charts/flextrain/Chart.yaml), so the chart's
# default image tags name what this built. Usage, from anywhere:
#
#   REGISTRY=registry.factory.example:5000/ml scripts/build-images.sh --push
#   scripts/build-images.sh --print                 # the resolved build definition, builds nothing
#   scripts/build-images.sh --push trainer-cpu      # one target
#
# Every other argument goes to `docker buildx bake`. Mirrors for air-gapped factories (each
# defaults to the public source), read from the environment:
#   PYTHON_IMAGE          base image of every stage (python:3.11.11-slim-bookworm)
#   PIP_INDEX_URL         a mirror of PyPI: every package but torch (https://pypi.org/simple)
#   PIP_TRUSTED_HOST      the mirror's host name if it serves plain HTTP or a certificate
#                         the base image does not trust (empty)
#   TORCH_CPU_INDEX_URL   CPU-only torch for trainer-cpu (https://download.pytorch.org/whl/cpu)
#   TORCH_CUDA_INDEX_URL  torch for trainer-cuda (empty: PIP_INDEX_URL, PyPI's CUDA build)
# A multi-platform build needs a builder with the docker-container driver (and QEMU or an
# arm64 node for the foreign architecture): `docker buildx create --use --name flextrain`.
set -euo pipefail
cd "$(dirname "$0")/.."

chart_version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/flextrain/Chart.yaml)
if [ -z "$chart_version" ]; then
  echo "build-images: no appVersion in charts/flextrain/Chart.yaml" >&2
  exit 1
fi
if [ -n "${VERSION:-}" ] && [ "$VERSION" != "$chart_version" ]; then
  echo "build-images: VERSION=$VERSION differs from the chart's appVersion $chart_version;" \
       "the images are tagged with the appVersion: change charts/flextrain/Chart.yaml instead" >&2
  exit 1
fi
export VERSION=$chart_version

if ! docker buildx version >/dev/null 2>&1; then
  echo "build-images: needs docker with the buildx plugin (docker buildx version failed)" >&2
  exit 1
fi
echo "==> FlexTrain $VERSION images into ${REGISTRY:-ghcr.io/flextrain}" >&2
exec docker buildx bake --file docker-bake.json "$@"
