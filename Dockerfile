# tl2edge serving image: `tl2edge serve` on ONNX Runtime, no TensorFlow inside.
#
#   CPU (default):  docker build -t tl2edge:cpu .
#   NVIDIA GPU:     docker build -t tl2edge:gpu --build-arg VARIANT=gpu \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .
#   model inside:   docker build -t tl2edge:cpu-flowers --build-arg MODEL_REPO=bundle/repo .
#   without Docker: make image  (buildah on a locally debootstrapped Debian base)
#
#   docker run -p 8500:8500 -p 9090:9090 -v $PWD/repo:/models:ro tl2edge:cpu
#
# Every `tl2edge serve` flag can also be set by an environment variable: --max-batch-size
# is TL2EDGE_MAX_BATCH_SIZE, and so on (deploy/container/entrypoint.py); flags given as
# arguments win. docs/operations.md has the details.

# Any image with Python 3.11 or 3.12, or none (a Debian/Ubuntu base gets it from apt).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# The CUDA images ship no Python; Debian's and Ubuntu's (3.11 / 3.12) are fine for us.
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---- deps: the runtime venv with tl2edge's dependencies, from pyproject.toml alone ------
# Rebuilt only when pyproject.toml changes; a code change reuses this layer. pip lives in
# its own venv and installs into /opt/venv from outside, so the runtime venv has no pip,
# no setuptools and no caches.
FROM base AS deps
# cpu: onnxruntime and, with OPENVINO=1 (the default), the OpenVINO execution provider
# plugin (the `openvino` extra, ~160 MB); gpu: onnxruntime-gpu. Releases 1.19 to 1.2x on
# PyPI are built for CUDA 12.x + cuDNN 9.x; the CUDA base image must match
# (docs/operations.md).
ARG VARIANT=cpu
ARG OPENVINO=1
ARG ORT_GPU_REQUIREMENT="onnxruntime-gpu>=1.20,<1.24"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/pip && python3 -m venv --without-pip /opt/venv
COPY pyproject.toml /src/pyproject.toml
RUN set -e; \
    case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2;; esac; \
    case "$OPENVINO" in 0|1) ;; *) echo "OPENVINO must be 0 or 1, not '$OPENVINO'" >&2; exit 2;; esac; \
    extras="serve"; \
    if [ "$VARIANT" = cpu ] && [ "$OPENVINO" = 1 ]; then extras="serve openvino"; fi; \
    python3 -c "import sys, tomllib; p = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']; \
print('\\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))" \
        $extras > /tmp/requirements.txt; \
    if [ "$VARIANT" = gpu ]; then \
        sed -i '/^onnxruntime/d' /tmp/requirements.txt; \
        echo "$ORT_GPU_REQUIREMENT" >> /tmp/requirements.txt; \
    fi; \
    /opt/pip/bin/pip --python /opt/venv/bin/python install -r /tmp/requirements.txt

# ---- builder: the tl2edge wheel from this checkout, installed into a small overlay -----
FROM deps AS builder
# Only what the wheel needs, so a model repository in the context (MODEL_REPO) does not
# invalidate this stage.
COPY pyproject.toml README.md /src/
COPY tl2edge /src/tl2edge
COPY serve /src/serve
COPY train /src/train
COPY export /src/export
COPY deploy/container/entrypoint.py deploy/container/check_openvino.py /src/deploy/container/
# --prefix keeps just tl2edge's files (package, dist-info, the `tl2edge` script with
# /opt/venv/bin/python as interpreter) in /opt/overlay, laid out like the venv.
RUN /opt/pip/bin/pip wheel --no-deps --wheel-dir /tmp/wheels /src \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-deps --prefix /opt/overlay \
        /tmp/wheels/tl2edge-*.whl \
    && install -D -m 0755 /src/deploy/container/entrypoint.py /opt/overlay/bin/tl2edge-entrypoint \
    && sed -i '1s|.*|#!/opt/venv/bin/python|' /opt/overlay/bin/tl2edge-entrypoint \
    && cp -a /opt/overlay/. /opt/venv/ \
    && /opt/venv/bin/python -c "import tl2edge.serve.cli, onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" \
    && /opt/venv/bin/python /src/deploy/container/check_openvino.py

# ---- runtime --------------------------------------------------------------------------
FROM base AS runtime
ARG VARIANT=cpu
ARG MODEL_REPO=""
LABEL org.opencontainers.image.title="tl2edge" \
      org.opencontainers.image.description="tl2edge gRPC image classifier server (ONNX Runtime, KServe v2 + Classify API)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tl2edge.variant="${VARIANT}"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin tl2edge
COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /opt/overlay/ /opt/venv/
# An empty /models unless MODEL_REPO names a repository inside the build context.
COPY ${MODEL_REPO:-deploy/container/models}/ /models/
# HOME=/tmp: the user has no home, and ONNX Runtime keeps a small state file under $HOME
# (it warns on every start when it cannot); /tmp is an emptyDir in the k8s manifests.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TL2EDGE_REPOSITORY=/models \
    TL2EDGE_HOST=0.0.0.0 \
    TL2EDGE_PORT=8500 \
    TL2EDGE_METRICS_PORT=9090 \
    TL2EDGE_METRICS_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8500 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["tl2edge-entrypoint", "--healthcheck"]
ENTRYPOINT ["tl2edge-entrypoint"]
