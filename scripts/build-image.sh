#!/usr/bin/env bash
# Build the serving image with buildah, no Docker engine or registry needed (`make image`).
#
#   scripts/build-image.sh                      # -> localhost/tl2edge:cpu
#   scripts/build-image.sh -t tl2edge:test      # another tag
#   scripts/build-image.sh -- --no-cache        # anything after -- goes to `buildah bud`
#
# Environment:
#   BASE_IMAGE   build on this image instead of the local Debian one that
#                scripts/container-base.sh prepares (and caches) on first use
#   VARIANT      cpu (default) or gpu; gpu needs BASE_IMAGE set to a CUDA 12 + cuDNN 9
#                runtime image, e.g. nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
#   OPENVINO     1 (default) or 0: the CPU image with or without the OpenVINO execution
#                provider plugin (onnxruntime-ep-openvino, ~160 MB)
#   MODEL_REPO   a model repository under bundle/ to bake into the image
#   CONTEXT      build context (default: this checkout), e.g. a copy with bundle/ in it
#
# Intermediate layers are kept (--layers), so a rebuild after a code change only reruns
# the wheel step; the dependency layer is rebuilt only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="localhost/tl2edge:${VARIANT:-cpu}"
if [[ "${1:-}" == "-t" ]]; then
    tag="$2"
    shift 2
fi
[[ "${1:-}" == "--" ]] && shift

[[ $(id -u) -eq 0 ]] || { echo "build-image: needs root (buildah --isolation chroot); run it with sudo" >&2; exit 1; }

base="${BASE_IMAGE:-}"
if [[ -z "$base" ]]; then
    [[ "${VARIANT:-cpu}" == "cpu" ]] || {
        echo "build-image: VARIANT=${VARIANT} needs BASE_IMAGE (a CUDA 12 + cuDNN 9 runtime image)" >&2
        exit 2
    }
    base=$(scripts/container-base.sh)
fi

args=(--build-arg "BASE_IMAGE=$base" --build-arg "VARIANT=${VARIANT:-cpu}")
[[ -n "${MODEL_REPO:-}" ]] && args+=(--build-arg "MODEL_REPO=$MODEL_REPO")
[[ -n "${OPENVINO:-}" ]] && args+=(--build-arg "OPENVINO=$OPENVINO")

# docker format: the OCI format has no HEALTHCHECK and buildah would drop ours.
echo "build-image: buildah bud -> $tag (base $base)" >&2
buildah bud --isolation chroot --layers --format docker "${args[@]}" -t "$tag" \
    -f "$PWD/Dockerfile" "$@" "${CONTEXT:-.}" >&2
echo "$tag"
