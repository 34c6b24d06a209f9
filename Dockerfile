# gpt2-serve image.
#
# GPU (default): CUDA runtime base, CUDA build of torch.
#   docker build -t gpt2-serve:cuda .
# CPU (CI, machines without GPUs): one base image and one wheel index away.
#   docker build -t gpt2-serve:cpu \
#     --build-arg BASE_IMAGE=python:3.11-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
# Bake a hub model into the image (needs network at build time; GPT2_MODEL then points at it):
#   docker build --build-arg MODEL=gpt2 --build-arg BAKE_MODEL=1 -t gpt2-serve:cuda-gpt2 .
#
# No "# syntax=" line on purpose: the file builds with the classic builder and with BuildKit, and
# never needs to pull a frontend image (scripts/container_smoke.sh builds with no registry).

ARG BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# --- python-base: the base image plus a Python 3.11+ that can make a venv, and the app user ----
# checkov:skip=CKV_DOCKER_7:the tag comes from the BASE_IMAGE build argument, pinned above
FROM ${BASE_IMAGE} AS python-base

# The interpreter to use. python3.11 exists on every base we build on (Ubuntu 22.04 ships it in
# universe, Debian bookworm and python:3.11-slim have it); on Ubuntu 24.04 set PYTHON=python3.12.
ARG PYTHON=python3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the interpreter only when the base lacks one that can create a venv. Versions are not
# pinned: the base image is a build argument, so its distribution (and its versions) vary.
# hadolint ignore=DL3008
RUN if "${PYTHON}" -m venv /tmp/venv-probe >/dev/null 2>&1; then \
        rm -rf /tmp/venv-probe; \
    else \
        rm -rf /tmp/venv-probe \
        && apt-get update \
        && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && "${PYTHON}" --version \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app

# --- builder: dependencies first (cached until pyproject.toml changes), then the source ---------
FROM python-base AS builder
ARG PYTHON=python3.11
# Where torch comes from: the CUDA 12.4 builds by default, .../whl/cpu for the CPU image.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# Optional extra place to find the torch wheel (a local wheelhouse served over HTTP, say).
ARG TORCH_FIND_LINKS=""
ARG TORCH_SPEC="torch>=2.4,<3"

RUN "${PYTHON}" -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}
WORKDIR /src

# torch alone first, from its own index, so the next step keeps this build of it. Its version
# is pinned by the TORCH_SPEC build argument, which hadolint cannot see through.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        ${TORCH_FIND_LINKS:+--find-links "${TORCH_FIND_LINKS}"} "${TORCH_SPEC}"

# The remaining runtime dependencies, read from pyproject.toml (the single list of them).
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('/tmp/requirements.txt', 'w').write(chr(10).join(deps) + chr(10))" \
    && pip install --no-cache-dir -r /tmp/requirements.txt

# The source: the only layers rebuilt when app/ changes.
COPY README.md LICENSE ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps . \
    && gpt2-serve --help >/dev/null

# --- runtime ---------------------------------------------------------------------------------
FROM python-base AS runtime
ARG MODEL=gpt2
ARG BAKE_MODEL=""

LABEL org.opencontainers.image.title="gpt2-serve" \
      org.opencontainers.image.description="GPT-2 inference service: continuous batching, KV-cached decoding, streaming" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

# Optionally bake the model into the image (BAKE_MODEL=1): it lands in /opt/models/<MODEL>, which
# GPT2_MODEL then names. Otherwise GPT2_MODEL is the hub id, fetched into the cache at start.
RUN if [ -n "${BAKE_MODEL}" ]; then \
        HF_HOME=/tmp/hf-bake python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(repo_id=sys.argv[1], local_dir='/opt/models/' + sys.argv[1], allow_patterns=['*.json', '*.txt', '*.safetensors', 'pytorch_model.bin'])" "${MODEL}" \
        && rm -rf /tmp/hf-bake "/opt/models/${MODEL}/.cache"; \
    fi \
    && mkdir -p /cache/huggingface \
    && chown -R 10001:10001 /cache

# Every setting is also a flag (gpt2-serve --help); these are the image's defaults.
ENV GPT2_MODEL=${BAKE_MODEL:+/opt/models/}${MODEL} \
    GPT2_HOST=0.0.0.0 \
    GPT2_PORT=8000 \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/.triton \
    CUDA_CACHE_PATH=/tmp/.nv \
    HOME=/home/app

# The Hugging Face cache (downloaded models) lives on a volume, not in the container layer.
VOLUME ["/cache"]
WORKDIR /home/app
USER 10001:10001
EXPOSE 8000

# Liveness only: /health answers while the process serves HTTP (readiness is /ready). Model
# loading happens before the server listens, hence the long start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GPT2_PORT', '8000'), timeout=4)"]

# SIGTERM drains: /ready turns 503, in-flight streams finish (GPT2_DRAIN_TIMEOUT_SECONDS), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gpt2-serve"]
CMD ["serve"]
