#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh installs on a GPU host that has no network.
#
# The GPU host has python 3.12 with torch, transformers, torchvision, pillow and numpy, but not
# dinoseek's other dependencies. This fetches those (and what they need), pinned to the versions
# this project is tested with, as manylinux x86_64 wheels for CPython 3.12, into .whl/ (git
# ignored). Pure-python wheels are the same for every python.
#
#   bench/fetch_wheels.sh                        # .whl/ for python 3.12
#   bench/fetch_wheels.sh --python-version 3.11 --dest /tmp/w311
#
# Then, on the GPU host: bench/gpu_check.sh --wheels .whl OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=.whl
PY_VERSION=3.12
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dest) DEST=$2; shift 2 ;;
        --python-version) PY_VERSION=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fetch_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# dinoseek's runtime dependencies less what the GPU image has (torch, transformers and theirs:
# numpy, pillow, safetensors, huggingface-hub, tokenizers, pyyaml, packaging, ...), with their
# own dependencies. gpu_check.sh installs a wheel only where the host lacks the package or has
# an older version (typing-extensions, say: pydantic needs a recent one).
PACKAGES=(
    annotated-doc==0.0.7
    annotated-types==0.8.0
    anyio==4.16.0
    certifi==2026.10.19.post1
    click==8.5.1
    fastapi==0.165.0
    grpcio==1.85.3
    h11==0.16.0
    h2==4.4.1
    hpack==4.2.0
    httpcore==1.0.9
    httpx==0.28.1
    hyperframe==6.1.0
    idna==3.20
    opentelemetry-api==1.45.2
    portalocker==4.4.2
    prometheus-client==0.26.0
    protobuf==7.36.2
    pydantic==2.14.4
    pydantic-core==2.50.5
    pydantic-settings==2.16.3
    python-dotenv==1.2.4
    python-multipart==0.0.34
    qdrant-client==1.20.0
    qdrant-edge-py==0.9.0
    starlette==1.10.0
    tqdm==4.70.1
    typing-extensions==4.16.0
    typing-inspection==0.4.5
    urllib3==2.8.0
    uvicorn==0.54.0
)

mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    --dest "$DEST" "${PACKAGES[@]}"

count=$(find "$DEST" -maxdepth 1 -type f -name '*.whl' | wc -l)
size=$(du -sh "$DEST" | cut -f1)
echo "fetch_wheels.sh: ${#PACKAGES[@]} packages for python $PY_VERSION -> $count wheels in $DEST ($size)"
