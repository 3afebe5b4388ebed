# dinoseek: one image for the search API (the default command) and the indexer.
#
#   docker build -t dinoseek:cuda .                            # CUDA torch (needs an NVIDIA GPU to use it)
#   docker build -t dinoseek:cpu --build-arg TORCH_VARIANT=cpu .
#
# Both variants start from python:3.11-slim: the CUDA torch wheel from PyPI brings its own CUDA
# libraries (nvidia-* wheels), so no CUDA base image is needed; the host needs only the NVIDIA
# driver and the NVIDIA Container Toolkit.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment at /opt/venv with torch, the dependencies and dinoseek itself.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# cuda: torch from PyPI (a CUDA build on linux x86_64); cpu: torch from PyTorch's CPU index
# (a much smaller image). The version is pinned here, not in pyproject.toml (see the Makefile).
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Layer 1, the largest and the least often changed: torch and torchvision. torchvision (the `gpu`
# extra) is installed in both variants, from the same index as torch, so that both images use
# the same preprocessing backend. torchvision is left unpinned on purpose: each release requires
# one exact torch version, so pip picks the release made for this torch.
# hadolint ignore=DL3013
RUN case "$TORCH_VARIANT" in \
        cuda) pip install "torch==${TORCH_VERSION}" torchvision ;; \
        cpu) pip install --index-url https://download.pytorch.org/whl/cpu \
                 "torch==${TORCH_VERSION}" torchvision ;; \
        *) echo "TORCH_VARIANT must be 'cuda' or 'cpu', not '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac

# Layer 2: every other dependency, read from pyproject.toml alone, so that editing the source
# does not reinstall them. The torch requirement there is already satisfied by layer 1.
# EXTRAS: the optional dependencies too, comma-separated (docker-compose.ray.yml adds ray).
ARG EXTRAS=gpu
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [r for e in sys.argv[1].split(',') for r in p['optional-dependencies'][e]]; print('\n'.join(p['dependencies'] + extras))" "$EXTRAS" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Layer 3: the source, installed without dependencies (they are all there already).
# README.md is the package's long description, so setuptools needs it.
COPY README.md ./
COPY dinoseek ./dinoseek
COPY indexer ./indexer
COPY search_api ./search_api
COPY dinoseek_cli ./dinoseek_cli
RUN pip install --no-deps . \
    && dinoseek --version

# ---------------------------------------------------------------------------------------------
# runtime: the virtual environment only; no compiler, no pip cache, no source tree.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="dinoseek" \
      org.opencontainers.image.description="Self-hosted image similarity search on DINOv2 features and Qdrant" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dinoseek.torch-variant="${TORCH_VARIANT}"

# HF_HOME: downloaded models live on a volume, so a new container does not download them again.
# DINOSEEK_DATA_DIR: the indexer's failure reports (and the embedded store, when no Qdrant URL
# is set) live on a volume too.
# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA Container Toolkit mounts into the container
# (compute for CUDA, utility for nvidia-smi); ignored where there is no GPU.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/hf-cache \
    DINOSEEK_DATA_DIR=/data/dinoseek \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# A fixed uid/gid, so that file permissions on volumes and bind mounts are predictable. The
# volume directories are created (and owned by that user) before VOLUME, so that Docker
# initialises a new named volume with this ownership.
RUN groupadd --system --gid 10001 dinoseek \
    && useradd --system --uid 10001 --gid dinoseek --create-home --home-dir /home/dinoseek \
        --shell /usr/sbin/nologin dinoseek \
    && mkdir -p /data/hf-cache /data/dinoseek \
    && chown -R dinoseek:dinoseek /data

COPY --from=builder /opt/venv /opt/venv

# Numeric, so that a runtime can tell it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/dinoseek
VOLUME ["/data/hf-cache", "/data/dinoseek"]
EXPOSE 8000

# Liveness: the process answers HTTP. python's urllib, because the image has no curl or wget.
# urlopen raises (exit 1) on a refused connection, a timeout or a non-2xx answer. The start
# period leaves time to load the model (the first start may also download it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# The search API. In a container it must listen on every interface, not on 127.0.0.1.
# The indexer runs the same image with another command: `dinoseek index /images`.
CMD ["dinoseek", "serve", "--host", "0.0.0.0", "--port", "8000"]
