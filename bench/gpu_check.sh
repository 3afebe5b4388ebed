#!/usr/bin/env bash
# The whole GPU measurement in one run, on a host with a GPU, python, torch and transformers but
# no network: parity (cuda bf16), then the index, query and adapt (self-distillation training)
# benchmarks against their baselines.
#
#   bench/fetch_wheels.sh                         # here, with network: wheels into .whl/
#   bench/gpu_check.sh OUT_DIR                    # on the GPU host, from the repository root
#   bench/gpu_check.sh --device cpu --quick OUT   # the same steps on a CPU, tiny sizes (a test)
#
# Options:
#   --wheels DIR         wheels to install (bench/fetch_wheels.sh) [.whl]
#   --target DIR         where to install them (pip --target, then PYTHONPATH) [/tmp/site]
#   --skip-install       use what is importable already
#   --install-only       install, check the imports, stop
#   --python PY          interpreter [python3]
#   --device cuda|cpu    [cuda]
#   --models LIST        [random:base,random:large]
#   --images N           synthetic images to index [1000]
#   --batch-sizes LIST   dinoseek index batch sizes [64,256]
#   --requests N         requests per concurrency level [200]
#   --concurrency LIST   [1,8,64]
#   --dtype DTYPE        parity dtype on the device [bfloat16]
#   --adapt-models LIST  models bench/adapt.py trains [random:small,random:base]
#   --adapt-batch N      its batch size [64]
#   --cache DIR          generated models and images [/tmp/dinoseek-bench-cache]
#   --step-timeout S     seconds each step may take [300]
#   --quick              random:tiny, 16 images, batch 8, 12 requests at 1,8; adapt: tiny, 2
#                        steps of 4
#
# OUT_DIR (default bench/out/gpu-DATE) receives parity.json, index.json, query.json, adapt.json,
# a log per step and summary.txt. Every step runs even if an earlier one failed; the exit code is 1 if any
# failed. The project runs from this source tree (PYTHONPATH), it is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

WHEELS=.whl
TARGET=/tmp/site
PYTHON=python3
DEVICE=cuda
MODELS=random:base,random:large
IMAGES=1000
BATCH_SIZES=64,256
REQUESTS=200
CONCURRENCY=1,8,64
DTYPE=bfloat16
ADAPT_MODELS=random:small,random:base
ADAPT_BATCH=64
ADAPT_STEPS=10
CACHE=/tmp/dinoseek-bench-cache
STEP_TIMEOUT=300
SKIP_INSTALL=0
INSTALL_ONLY=0
QUICK=0
OUT=

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; shift 2 ;;
        --target) TARGET=$2; shift 2 ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        --install-only) INSTALL_ONLY=1; shift ;;
        --python) PYTHON=$2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --models) MODELS=$2; shift 2 ;;
        --images) IMAGES=$2; shift 2 ;;
        --batch-sizes) BATCH_SIZES=$2; shift 2 ;;
        --requests) REQUESTS=$2; shift 2 ;;
        --concurrency) CONCURRENCY=$2; shift 2 ;;
        --dtype) DTYPE=$2; shift 2 ;;
        --adapt-models) ADAPT_MODELS=$2; shift 2 ;;
        --adapt-batch) ADAPT_BATCH=$2; shift 2 ;;
        --cache) CACHE=$2; shift 2 ;;
        --step-timeout) STEP_TIMEOUT=$2; shift 2 ;;
        --quick)
            QUICK=1
            MODELS=random:tiny IMAGES=16 BATCH_SIZES=8 REQUESTS=12 CONCURRENCY=1,8
            ADAPT_MODELS=random:tiny ADAPT_BATCH=4 ADAPT_STEPS=2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OUT=$1; shift ;;
    esac
done
case "$DEVICE" in cuda | cpu) ;; *) echo "gpu_check.sh: --device cuda or cpu" >&2; exit 2 ;; esac

OUT=${OUT:-bench/out/gpu-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
STARTED=$(date +%s)
FAILED=()

say() { echo "== $*" | tee -a "$SUMMARY"; }

# -- 1. dependencies: wheels the host lacks (or has older), into --target --------------------
if [ "$SKIP_INSTALL" = 0 ]; then
    if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "gpu_check.sh: no wheels in $WHEELS; run bench/fetch_wheels.sh where there is" \
            "network, bring .whl/ along, or pass --skip-install" >&2
        exit 2
    fi
    mkdir -p "$TARGET"
    # A wheel is installed when its package is missing here or older than the wheel: what the
    # host has (torch's typing-extensions, transformers' tqdm) is kept unless too old.
    mapfile -t TO_INSTALL < <(PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - "$WHEELS" <<'EOF'
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

try:
    from packaging.version import Version
except ImportError:  # no packaging: keep what is there
    Version = None

for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    dist = re.sub(r"[-_.]+", "-", name).lower()
    try:
        have = metadata.version(dist)
    except metadata.PackageNotFoundError:
        print(wheel)
        continue
    if Version is not None and Version(have) < Version(version):
        print(wheel)
        print(f"   {dist}: {have} here is older than {version}: installing", file=sys.stderr)
    else:
        print(f"   {dist}: keeping {have} (wheel {version})", file=sys.stderr)
EOF
    )
    if [ "${#TO_INSTALL[@]}" -gt 0 ]; then
        say "installing ${#TO_INSTALL[@]} wheels into $TARGET"
        timeout 600 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$TARGET" "${TO_INSTALL[@]}"
    else
        say "every wheel's package is already importable; nothing to install"
    fi
fi
export PYTHONPATH="$REPO:$TARGET${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

say "imports"
if [ "$INSTALL_ONLY" = 1 ]; then
    "$PYTHON" -c "import fastapi, pydantic, pydantic_settings, qdrant_edge, qdrant_client, \
uvicorn, multipart, prometheus_client, click, tqdm, httpx, dinoseek.settings, dinoseek.store, \
search_api.batching; print('   the dependencies import')" 2>&1 | tee -a "$SUMMARY"
    exit 0
fi
if ! "$PYTHON" - "$DEVICE" <<'EOF' 2>&1 | tee -a "$SUMMARY"; then
import sys

import fastapi, httpx, pydantic, qdrant_edge, torch, transformers, uvicorn  # noqa: F401
import dinoseek.torch_embedder, dinoseek_cli.main, search_api.app  # noqa: F401

print(f"   python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
      f"{transformers.__version__}, fastapi {fastapi.__version__}, pydantic {pydantic.__version__}")
if sys.argv[1] == "cuda":
    if not torch.cuda.is_available():
        sys.exit("   torch sees no CUDA GPU: run with --device cpu, or fix the host")
    print(f"   {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}")
EOF
    echo "gpu_check.sh: the imports failed (above); nothing was measured" >&2
    exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader | sed 's/^/   nvidia-smi: /' | tee -a "$SUMMARY"

# -- 2. the steps -------------------------------------------------------------------------------
step() {  # step NAME COMMAND...: time-bounded, logged, never stops the script
    local name=$1 began rc
    shift
    began=$(date +%s)
    say "$name: $*"
    set +e
    timeout --kill-after=30 "$STEP_TIMEOUT" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    set -e
    if [ "$rc" = 0 ]; then
        say "$name: ok in $(($(date +%s) - began)) s"
    else
        [ "$rc" = 124 ] && say "$name: ran past $STEP_TIMEOUT s"
        say "$name: FAILED (exit $rc) after $(($(date +%s) - began)) s; end of $name.log:"
        tail -n 25 "$OUT/$name.log" | sed 's/^/   /' | tee -a "$SUMMARY"
        FAILED+=("$name")
    fi
}

step prepare "$PYTHON" bench/common.py prepare --cache "$CACHE" --models "$MODELS" \
    --images "$IMAGES"

COMMON=(--cache "$CACHE" --out "$OUT")
step parity "$PYTHON" bench/parity.py --models "$MODELS" --device "$DEVICE" --dtype "$DTYPE" \
    "${COMMON[@]}"
step index "$PYTHON" bench/index.py --device "$DEVICE" --models "$MODELS" \
    --batch-sizes "$BATCH_SIZES" --images "$IMAGES" "${COMMON[@]}"
step query "$PYTHON" bench/query.py --device "$DEVICE" --model "$MODELS" --images "$IMAGES" \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" "${COMMON[@]}"
step adapt "$PYTHON" bench/adapt.py --device "$DEVICE" --models "$ADAPT_MODELS" \
    --batch-size "$ADAPT_BATCH" --steps "$ADAPT_STEPS" "${COMMON[@]}"

# -- 3. summary -------------------------------------------------------------------------------
{
    echo
    echo "== gpu_check.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - STARTED)) s"
    echo "   command: bench/gpu_check.sh --device $DEVICE --models $MODELS --images $IMAGES" \
        "--batch-sizes $BATCH_SIZES --requests $REQUESTS --concurrency $CONCURRENCY" \
        "$([ "$QUICK" = 1 ] && echo '(--quick)')"
    for name in parity index query adapt; do
        [ -f "$OUT/$name.log" ] || continue
        echo
        echo "-- $name"
        [ "$name" = index ] && grep -E '^(machine|software|gpu): ' "$OUT/$name.log"
        grep -E '^\||dinoseek index: |^FAIL|^parity:' "$OUT/$name.log" || true
    done
    echo
    if [ "${#FAILED[@]}" -gt 0 ]; then
        echo "FAILED steps: ${FAILED[*]} (logs in $OUT)"
    else
        echo "all steps ok; results in $OUT"
    fi
} | tee -a "$SUMMARY"
[ "${#FAILED[@]}" = 0 ]
