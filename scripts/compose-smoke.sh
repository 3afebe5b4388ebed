#!/usr/bin/env bash
# End-to-end check of the docker compose stack on a host with Docker: build the image, index a
# folder, start the API, check /health, /ready, the page and /search, then take it all down.
#
#   scripts/compose-smoke.sh [--cpu] [--cluster] [--host-network] [--tiny-model]
#                            [--wheels-from-host] [IMAGES_DIR]
#
#   --cpu               add docker-compose.cpu.yml (a host without an NVIDIA GPU)
#   --cluster           add docker-compose.cluster.yml (three Qdrant nodes)
#   --host-network      add deploy/docker-compose.host-network.yml (an engine without bridge
#                       networking): the builds and the apps on the host's network, the API on
#                       127.0.0.1 only, the embedded store instead of the Qdrant server, so the
#                       folder is indexed before the API starts
#   --tiny-model        a tiny random-weight DINOv2, written in the image (nothing downloaded;
#                       its results mean nothing, its code path is the real one)
#   --wheels-from-host  the image's Python packages come from this host's pip, with its own
#                       configuration (indexes, local wheels, CA bundle): downloaded here and
#                       served to the build on 127.0.0.1 (needs --host-network)
#   IMAGES_DIR          a folder of images to index; without it, 40 synthetic images are generated
#                       (python -m dinoseek.synthetic) in a temporary folder
#
# It runs as its own compose project (dinoseek-smoke) on its own port, so a stack you already
# run is left alone, and it removes its containers and volumes at the end, also on failure.
# Without --tiny-model the model comes from the Hugging Face hub (facebook/dinov2-small by
# default here; set DINOSEEK_MODEL to try another). Environment: SMOKE_PORT (the API, default
# 18000), SMOKE_QDRANT_PORT (default 16333), SMOKE_WAIT_S (default 1200: the first build
# downloads torch, the first start the model), SMOKE_PYTHON_IMAGE (the build's PYTHON_IMAGE),
# SMOKE_PYTHON (the python3 whose pip --wheels-from-host uses, of the image's Python version),
# SMOKE_WHEELS_PORT (where it serves the wheels, default SMOKE_PORT + 1), DINOSEEK_API_KEY
# (sent as X-API-Key when set), KEEP_STACK=1 (leave the stack running).
set -euo pipefail

cd "$(dirname "$0")/.."

log() { printf '\n==> [%4ss] %s\n' "$SECONDS" "$*" >&2; }
fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

files=(-f docker-compose.yml)
images_dir=""
host_network=""
tiny_model=""
wheels_from_host=""
variant=cuda
for arg in "$@"; do
    case "$arg" in
        --cpu)
            files+=(-f docker-compose.cpu.yml)
            variant=cpu
            ;;
        --cluster) files+=(-f docker-compose.cluster.yml) ;;
        --host-network) host_network=yes ;;
        --tiny-model) tiny_model=yes ;;
        --wheels-from-host) wheels_from_host=yes ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
            exit 0
            ;;
        -*) fail "unknown option $arg (see --help)" ;;
        *) images_dir="$arg" ;;
    esac
done
if [ -n "$host_network" ]; then
    case " ${files[*]} " in
        *docker-compose.cluster.yml*) fail "--host-network runs no Qdrant server: no --cluster" ;;
    esac
    files+=(-f deploy/docker-compose.host-network.yml)
fi
[ -z "$wheels_from_host" ] || [ -n "$host_network" ] ||
    fail "--wheels-from-host needs --host-network (the build reaches this host's 127.0.0.1)"

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
wheel_server=""

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

# This run's own settings, as one more compose file: the API probed every 2 s, so that `up
# --wait` returns soon after it answers, and with --tiny-model the model folder at /models.
model_dir="$work_dir/model"
mkdir -p "$model_dir"
{
    echo "services:"
    echo "  search-api:"
    echo "    healthcheck: {interval: 2s}"
    if [ -n "$tiny_model" ]; then
        mount="volumes: [{type: bind, source: \"$model_dir\", target: /models, read_only: true}]"
        printf '    %s\n  indexer:\n    %s\n' "$mount" "$mount"
    fi
} >"$work_dir/compose.smoke.yml"
if [ -n "$tiny_model" ]; then
    export DINOSEEK_MODEL=/models/tiny-dinov2
fi
files+=(-f "$work_dir/compose.smoke.yml")

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
    if [ -n "$wheel_server" ]; then
        kill "$wheel_server" 2>/dev/null || true
        wait "$wheel_server" 2>/dev/null || true
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

build_args=()
if [ -n "${SMOKE_PYTHON_IMAGE:-}" ]; then
    build_args+=(--build-arg "PYTHON_IMAGE=${SMOKE_PYTHON_IMAGE}")
fi
if [ -n "$wheels_from_host" ]; then
    # What the Dockerfile installs: torch (with torchvision on cuda), the dependencies and the
    # build backend from pyproject.toml (the gpu extra on cuda).
    python="${SMOKE_PYTHON:-python3}"
    torch_version="$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)"
    [ -n "$torch_version" ] || fail "no ARG TORCH_VERSION in the Dockerfile"
    # The wheels are chosen for this host's Python: the image's must be the same version.
    base_image="${SMOKE_PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)}"
    version='import sys; print("%d.%d" % sys.version_info[:2])'
    here="$("$python" -c "$version")"
    there="$(docker run --rm --network none "$base_image" python -c "$version")" ||
        fail "could not run python in $base_image"
    [ "$here" = "$there" ] || fail "$python is Python $here, $base_image has Python $there"
    torch=("torch==${torch_version}")
    extras=""
    if [ "$variant" = cuda ]; then
        torch+=(torchvision)
        extras=gpu
    fi
    "$python" -c "import sys, tomllib; t = tomllib.load(open('pyproject.toml', 'rb')); p = t['project']; extras = [e for e in sys.argv[1].split(',') if e]; print('\n'.join(p['dependencies'] + [r for e in extras for r in p['optional-dependencies'][e]] + t['build-system']['requires']))" "$extras" \
        >"$work_dir/requirements.txt"
    log "downloading the image's packages with this host's pip ($python -m pip download)"
    if ! "$python" -m pip download --quiet --dest "$work_dir/wheels" "${torch[@]}" \
        -r "$work_dir/requirements.txt" 2>"$work_dir/pip.log"; then
        cat "$work_dir/pip.log" >&2
        fail "pip could not download the image's packages"
    fi
    for wheel in "$work_dir"/wheels/torch-*; do echo "torch: ${wheel##*/}" >&2; done
    # A fixed port: the build arguments below are part of the build cache's key.
    wheel_port="${SMOKE_WHEELS_PORT:-$((port + 1))}"
    "$python" -m http.server --bind 127.0.0.1 --directory "$work_dir/wheels" "$wheel_port" \
        >"$work_dir/wheel-server.log" 2>&1 &
    wheel_server=$!
    served=""
    for _ in $(seq 1 50); do
        if curl -fsS -o /dev/null "http://127.0.0.1:${wheel_port}/" 2>/dev/null; then
            served=yes
            break
        fi
        kill -0 "$wheel_server" 2>/dev/null || break
        sleep 0.2
    done
    [ -n "$served" ] || fail "could not serve the wheels on 127.0.0.1:$wheel_port (set SMOKE_WHEELS_PORT)"
    build_args+=(
        --build-arg PIP_NO_INDEX=1
        --build-arg "PIP_FIND_LINKS=http://127.0.0.1:${wheel_port}/"
        --build-arg TORCH_CPU_INDEX_URL=
    )
fi

log "building the image"
compose build ${build_args[@]+"${build_args[@]}"} search-api || fail "the image did not build"
image="$(compose config --images | grep '^dinoseek:' | head -n 1)"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$image" >&2

if [ -n "$tiny_model" ]; then
    log "writing a tiny random-weight DINOv2 to $model_dir (mounted at /models)"
    compose run --rm --no-deps --user "$(id -u):$(id -g)" \
        -v "$model_dir:/out" --entrypoint python indexer \
        -m dinoseek.synthetic model /out/tiny-dinov2 --size tiny ||
        fail "could not write the tiny model"
    chmod -R a+rX "$model_dir"
fi

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

index() {
    log "indexing $IMAGES_DIR (mounted at /images)"
    compose run --rm indexer dinoseek index /images --labels-from-folders ||
        fail "the indexer failed"
}

start() {
    log "starting the API (up to ${wait_s}s)"
    compose up -d --wait --wait-timeout "$wait_s" ||
        fail "the stack did not become healthy; see the logs below"
    compose ps --format 'table {{.Service}}\t{{.Image}}\t{{.Status}}' >&2
}

# The embedded store has one user at a time: index before the API opens it.
if [ -n "$host_network" ]; then
    index
    start
else
    start
    index
fi

log "GET /health"
curl -fsS "$base_url/health" || fail "/health did not answer 200"
echo

if [ -n "$host_network" ] && [ -r /proc/net/tcp ]; then
    log "the API listens on 127.0.0.1:$port only"
    # /proc/net/tcp{,6}: local address and state of every socket; 0A is LISTEN.
    python3 - "$port" <<'EOF' || fail "the API listens beyond 127.0.0.1"
import sys

port = int(sys.argv[1])
listening = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            listening.add(address)
print(f"listening on port {port}: {sorted(listening)}")
if listening != {"0100007F"}:
    sys.exit("expected 127.0.0.1 only (0100007F)")
EOF
fi

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

log "GET / (the search page) and GET /ui/app.js"
curl -fsS "$base_url/" >"$work_dir/page.html" || fail "/ did not answer 200"
grep -q '<title>dinoseek</title>' "$work_dir/page.html" || fail "/ is not the search page"
curl -fsS -o /dev/null "$base_url/ui/app.js" || fail "/ui/app.js did not answer 200"
echo "the page and its script answer 200"

query="$(find "$IMAGES_DIR" -type f -iname '*.jp*g' | sort | head -n 1)"
[ -n "$query" ] || fail "no JPEG in $IMAGES_DIR to query with"
relative="${query#"$IMAGES_DIR"/}"
log "POST /search with $relative"
curl -fsS ${auth[@]+"${auth[@]}"} -F "image=@${query}" "$base_url/search?top_k=3" >"$work_dir/search.json" ||
    fail "/search did not answer 200"

# The best hit for an indexed image is that image itself, stored under its container path
# (a point lists every path with the same content, hence `paths`).
python3 - "$work_dir/search.json" "/images/$relative" <<'EOF' || fail "unexpected /search answer"
import json
import sys

path, expected = sys.argv[1], sys.argv[2]
with open(path) as f:
    answer = json.load(f)
hits = answer.get("results") if isinstance(answer, dict) else None
if not hits:
    sys.exit(f"no 'results' list in the answer: {json.dumps(answer)[:2000]}")
print(f"model {answer.get('model')}, collection {answer.get('collection')}, {len(hits)} results:")
for hit in hits:
    print(f"  {hit.get('score'):.4f}  {hit.get('path')}  (label {hit.get('label')})")
top = hits[0]
paths = {top.get("path")} | set((top.get("payload") or {}).get("paths") or [])
if expected not in paths:
    sys.exit(f"the top hit should be the query image itself, {expected}")
EOF
