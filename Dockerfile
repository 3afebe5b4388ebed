# dinoseek: one image for the search API (the default command) and the indexer.
#
#   docker build -t dinoseek:cuda .                            # CUDA torch (needs an NVIDIA GPU to use it)
#   docker build -t dinoseek:cpu --build-arg TORCH_VARIANT=cpu .
#
# Both variants start from python:3.11-slim: the CUDA torch wheel from PyPI brings its own CUDA
# libraries (nvidia-* wheels), so no CUDA base image is needed; the host needs only the NVIDIA
# driver and the NVIDIA Container Toolkit. PYTHON_IMAGE may name another Debian-based image with
# `python` (3.11 or later) and its venv module.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: a virtual environment at /opt/venv with torch, the dependencies and dinoseek itself.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# cuda: torch and torchvision from pip's index (PyPI: CUDA builds on linux x86_64).
# cpu: torch alone, from TORCH_CPU_INDEX_URL (PyTorch's CPU wheel index, a much smaller image);
# set it empty to take torch from pip's own sources instead (PIP_* below).
# TORCH_PACKAGES, when set, replaces the variant's list (e.g. "torch==2.13.0+cpu").
# The version is pinned here, not in pyproject.toml (see the Makefile).
ARG TORCH_VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_PACKAGES=
# pip's sources, for a host that builds from a mirror or a local wheelhouse: pip reads these
# from its environment. Unset by default (PyPI). Not for credentials: build arguments are
# recorded with the build.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Layer 1, the largest and the least often changed: torch. torchvision (the `gpu` extra, for
# JPEG decoding on the GPU) only on cuda, installed with torch so that pip picks the release
# made for it; PyPI's torchvision is built against PyPI's CUDA torch and does not load beside a
# CPU torch. The checks stop a build that would not run: a cuda image whose torch is a CPU build
# (a pip source that prefers a local CPU wheel), or a torchvision that does not load.
# hadolint ignore=DL3013,SC2086
RUN case "$TORCH_VARIANT" in \
        cuda) packages="torch==${TORCH_VERSION} torchvision" index="" ;; \
        cpu) packages="torch==${TORCH_VERSION}" index="$TORCH_CPU_INDEX_URL" ;; \
        *) echo "TORCH_VARIANT must be 'cuda' or 'cpu', not '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac \
    && pip install ${index:+--index-url "$index"} ${TORCH_PACKAGES:-$packages} \
    && if [ "$TORCH_VARIANT" = cuda ]; then \
        python -c "import sys, torch; torch.version.cuda or sys.exit(f'TORCH_VARIANT=cuda installed torch {torch.__version__}, a CPU build: build with TORCH_VARIANT=cpu')" \
        && python -c "import torchvision"; \
    fi

# Layer 2: every other dependency, read from pyproject.toml alone, so that editing the source
# does not reinstall them. The torch requirement there is already satisfied by layer 1.
# EXTRAS: optional dependencies to add, comma-separated (docker-compose.ray.yml adds ray). The
# cuda variant adds gpu itself; the cpu variant refuses it (torchvision, see layer 1).
ARG EXTRAS=
COPY pyproject.toml ./
RUN case "${TORCH_VARIANT},${EXTRAS}," in \
        cuda,*) extras="gpu,${EXTRAS}" ;; \
        cpu,gpu,* | cpu,*,gpu,*) echo "EXTRAS: the gpu extra (torchvision) needs TORCH_VARIANT=cuda" >&2; exit 1 ;; \
        *) extras="$EXTRAS" ;; \
    esac \
    && python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; extras = [e for e in sys.argv[1].split(',') if e]; print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]]))" "$extras" \
        > requirements.txt \
    && pip install -r requirements.txt

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

# Liveness: the process answers HTTP, on the port the container's command gave `dinoseek serve`
# (read from the command line of process 1, `--port N`; 8000 without one). python's urllib,
# because the image has no curl or wget. urlopen raises (exit 1) on a refused connection, a
# timeout or a non-2xx answer. The start period leaves time to load the model (the first start
# may also download it). docker-compose.yml's search-api runs the same probe.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import re, urllib.request; m = re.search(r'--port[= ]+(\\d+)', open('/proc/1/cmdline', 'rb').read().decode().replace('\\0', ' ')); urllib.request.urlopen(f'http://127.0.0.1:{m[1] if m else 8000}/health', timeout=4)"]

# The search API. In a container it must listen on every interface, not on 127.0.0.1.
# The indexer runs the same image with another command: `dinoseek index /images`.
CMD ["dinoseek", "serve", "--host", "0.0.0.0", "--port", "8000"]
