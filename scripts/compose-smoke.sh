#!/usr/bin/env bash
# End-to-end check of the docker compose stack, on a host with Docker (not run by CI):
# build and start it, index a folder, check /ready, query /search, then take it down.
#
#   scripts/compose-smoke.sh [--cpu] [--cluster] [IMAGES_DIR]
#
#   --cpu       add docker-compose.cpu.yml (a host without an NVIDIA GPU)
#   --cluster   add docker-compose.cluster.yml (three Qdrant nodes)
#   IMAGES_DIR  a folder of images to index; without it, 40 synthetic images are generated
#               (python -m dinoseek.synthetic) in a temporary folder.
#
# It runs as its own compose project (dinoseek-smoke) on its own port, so a stack you already
# run is left alone, and it removes its containers and volumes at the end, also on failure.
# The model comes from the Hugging Face hub (facebook/dinov2-small by default here, for speed;
# set DINOSEEK_MODEL to try another). Environment: SMOKE_PORT (the API, default 18000),
# SMOKE_QDRANT_PORT (default 16333), SMOKE_WAIT_S (default 1200: the first build downloads
# torch, the first start the model), DINOSEEK_API_KEY (sent as X-API-Key when set),
# KEEP_STACK=1 (leave the stack running).
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

files=(-f docker-compose.yml)
images_dir=""
for arg in "$@"; do
    case "$arg" in
        --cpu) files+=(-f docker-compose.cpu.yml) ;;
        --cluster) files+=(-f docker-compose.cluster.yml) ;;
        -h | --help)
            sed -n '2,18p' "$0"
            exit 0
            ;;
        -*) fail "unknown option $arg (see --help)" ;;
        *) images_dir="$arg" ;;
    esac
done

command -v docker >/dev/null || fail "docker is not installed"
command -v curl >/dev/null || fail "curl is not installed"
command -v python3 >/dev/null || fail "python3 is not installed (used to read JSON answers)"
docker compose version >/dev/null 2>&1 || fail "the docker compose plugin (v2.24.4 or later) is missing"
docker info >/dev/null 2>&1 || fail "the Docker engine is not reachable (is it running? may this user use it?)"

port="${SMOKE_PORT:-18000}"
wait_s="${SMOKE_WAIT_S:-1200}"
base_url="http://127.0.0.1:${port}"
project=dinoseek-smoke
work_dir="$(mktemp -d)"

export DINOSEEK_BIND=127.0.0.1
export DINOSEEK_PORT="$port"
export DINOSEEK_MODEL="${DINOSEEK_MODEL:-facebook/dinov2-small}"
export QDRANT_PORT="${SMOKE_QDRANT_PORT:-16333}"
# A folder the container user (uid 10001) can read; the indexer's paths will be /images/...
if [ -z "$images_dir" ]; then
    images_dir="$work_dir/images"
    mkdir -p "$images_dir"
fi
[ -d "$images_dir" ] || fail "$images_dir is not a folder"
IMAGES_DIR="$(cd "$images_dir" && pwd)"
export IMAGES_DIR

compose() { docker compose -p "$project" "${files[@]}" "$@"; }

# ${auth[@]+"${auth[@]}"} below: an empty array under `set -u` is an error in bash < 4.4.
auth=()
if [ -n "${DINOSEEK_API_KEY:-}" ]; then
    auth=(-H "X-API-Key: ${DINOSEEK_API_KEY}")
fi

cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        log "the last 80 log lines of each service"
        compose --profile index logs --no-color --tail 80 >&2 || true
    fi
    if [ "${KEEP_STACK:-0}" = 1 ]; then
        log "KEEP_STACK=1: leaving project $project running (docker compose -p $project ... down -v)"
    else
        log "docker compose down -v"
        compose --profile index down -v --remove-orphans >&2 || true
    fi
    rm -rf "$work_dir"
    if [ "$status" -eq 0 ]; then
        log "smoke test passed"
    else
        printf '\nsmoke test FAILED (exit %s)\n' "$status" >&2
    fi
}
trap cleanup EXIT

log "checking the compose files: ${files[*]}"
compose --profile index config --quiet || fail "the compose files are not valid"

log "building the image and starting qdrant + search-api (up to ${wait_s}s)"
compose up -d --build --wait --wait-timeout "$wait_s" ||
    fail "the stack did not become healthy; see the logs below"

log "GET /health"
curl -fsS "$base_url/health" || fail "/health did not answer 200"
echo

if [ -z "$(find "$IMAGES_DIR" -type f -iname '*.jp*g' -print -quit)" ]; then
    log "generating 40 synthetic images in $IMAGES_DIR"
    # In the image, as the calling user, so the files belong to them and nothing but Docker is
    # needed on the host.
    compose run --rm --no-deps --user "$(id -u):$(id -g)" \
        -v "$IMAGES_DIR:/out" --entrypoint python indexer \
        -m dinoseek.synthetic images /out --count 40 ||
        fail "could not generate images"
    chmod -R a+rX "$IMAGES_DIR"
fi

log "indexing $IMAGES_DIR (mounted at /images)"
compose run --rm indexer dinoseek index /images --labels-from-folders ||
    fail "the indexer failed"

log "GET /ready"
ready=""
for _ in $(seq 1 30); do
    if curl -fsS ${auth[@]+"${auth[@]}"} "$base_url/ready" >"$work_dir/ready.json" 2>/dev/null; then
        ready=yes
        break
    fi
    sleep 2
done
[ -n "$ready" ] || fail "/ready did not answer 200 within 60 s"
cat "$work_dir/ready.json"
echo

query="$(find "$IMAGES_DIR" -type f -iname '*.jp*g' | sort | head -n 1)"
[ -n "$query" ] || fail "no JPEG in $IMAGES_DIR to query with"
relative="${query#"$IMAGES_DIR"/}"
log "POST /search with $relative"
curl -fsS ${auth[@]+"${auth[@]}"} -F "image=@${query}" "$base_url/search" >"$work_dir/search.json" ||
    fail "/search did not answer 200"

# The best hit for an indexed image is that image itself, stored under its container path
# (a point lists every path with the same content, hence `paths`).
python3 - "$work_dir/search.json" "/images/$relative" <<'EOF' || fail "unexpected /search answer"
import json
import sys

path, expected = sys.argv[1], sys.argv[2]
with open(path) as f:
    answer = json.load(f)
print(json.dumps(answer, indent=2)[:2000])
hits = answer.get("results") if isinstance(answer, dict) else None
if not hits:
    sys.exit("no 'results' list in the answer")
top = hits[0]
paths = {top.get("path")} | set((top.get("payload") or {}).get("paths") or [])
print(f"\n{len(hits)} results; top: {top.get('path')} (score {top.get('score')})")
if expected not in paths:
    sys.exit(f"the top hit should be the query image itself, {expected}")
EOF
