"""A bounded schemathesis run against the real server: a real uvicorn with the API key on, a
labelled collection with a probe, every check schemathesis has, a fixed seed and a cap on
the cases per operation. It must end with no failure: no 5xx, no response outside the schema,
no request the schema forbids answered with success, and so on (``st explain CODE``).

The stand-in model serves (this run is about the HTTP surface, not the model).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.probe.collection import train_collection_probe
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from search_api.route_params import MAX_BATCH_IMAGES
from tests.indexing import indexed_tree
from tests.live_server import LiveServer, live_server

API_KEY = "schemathesis-key"
SEED = 20261201
MAX_EXAMPLES = 25
MIN_CASES = 400  # what this seed and cap generate is well above; fewer means a broken run
# Hang detectors, not speeds: the run takes about a minute alone on 2 cores, and many times
# that beside other suites.
TIME_LIMIT_S = 900
REQUEST_TIMEOUT_S = 120
UPLOAD_PATHS = (
    "/search",
    "/search/batch",
    "/classify",
    "/embed",
    "/embed/pca",
    "/points/{point_id}/match",
)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder
) -> Iterator[tuple[LiveServer, Path]]:
    """(the server, one of the photos it has indexed)."""
    root = tmp_path_factory.mktemp("schemathesis")
    _, photos = indexed_tree(
        root, embedder, per_class=6, classes=("cats", "dogs", "birds"), regions=True
    )
    with EdgeStore(root / "data") as store:
        store.acquire("images")
        train_collection_probe(store, "images", min_per_class=2, holdout=0.25)
    settings = Settings(model=embedder.model_id, data_dir=root / "data", api_key=API_KEY)  # type: ignore[arg-type]
    runtime = Runtime.open(
        settings,
        collection="optional",
        policy=ModelPolicy(purpose="serve"),
        store=EdgeStore(root / "data"),
        embedder=embedder,
    )
    with live_server(runtime) as server:
        yield server, sorted(photos.rglob("*.jpg"))[0]


def some_point_id(server: LiveServer, photo: Path) -> str:
    with photo.open("rb") as image:
        response = httpx.post(
            f"{server.url}/search",
            params={"top_k": 1},
            files={"image": (photo.name, image)},
            headers={"X-API-Key": API_KEY},
        )
    response.raise_for_status()
    return str(response.json()["results"][0]["id"])


def config(point_id: str) -> str:
    """The run's schemathesis.toml. Two statuses are added to what the checks expect, each
    for a reason the schema cannot state."""
    uploads = ", ".join(f'"{path}"' for path in UPLOAD_PATHS)
    return f"""
seed = {SEED}
workers = 1
request-timeout = {REQUEST_TIMEOUT_S}
headers = {{ "X-API-Key" = "{API_KEY}" }}

[generation]
max-examples = {MAX_EXAMPLES}

# The point operations get a point that exists, not only 404s (the match routes two).
[parameters]
point_id = "{point_id}"
other_id = "{point_id}"

# 413 is how the service refuses too much: more than {MAX_BATCH_IMAGES} images, too large an upload.
[checks]
negative_data_rejection.expected-statuses = [
    400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429,
]

# An operation takes the first block that includes it.
#
# Multipart parts carry no type: an image "of type boolean" is the bytes `true`, an unusable
# image, which the batch contract answers with an error item in a 200. The query parameters
# it shares with POST /search are checked there.
[[operations]]
include-path = "/search/batch"
checks.negative_data_rejection.enabled = false
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 415, 422, 429]

# Bytes that fit the schema are rarely an image, and no schema can say what is one:
# 415 (no image signature) and 422 (cannot be decoded) are the right answers to them.
[[operations]]
include-path = [{uploads}]
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 415, 422, 429]

# A cluster id and a version are valid or not by the clusters of the moment, which no schema
# can state: 409 is the answer to a version computed over since (any made-up one), 202 the
# answer while the first clusters are computed.
[[operations]]
include-path-regex = "^/clusters/"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409]

# Labels go to a point that exists, not only to unknown ids (404, nothing written).
[[operations]]
include-path = "/points/labels"
parameters = {{ "body.ids" = ["{point_id}"] }}

# A training that fits the schema may find the probe training already (409) or others
# training (429), by the trainings the run started before.
[[operations]]
include-path = "/probes/{{name}}/train"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 429]
"""


@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_schemathesis_finds_no_failure_on_the_real_server(
    served: tuple[LiveServer, Path], tmp_path: Path
) -> None:
    server, photo = served
    # The routes that add and delete points and collections have a run of their own, on a
    # store they may change (tests/hostile/test_schemathesis_writes.py).
    run_schemathesis(
        server, config(some_point_id(server, photo)), tmp_path, "--exclude-tag", "writes"
    )


def run_schemathesis(
    server: LiveServer,
    config_text: str,
    workdir: Path,
    *options: str,
    min_cases: int = MIN_CASES,
    gone_after_first: tuple[str, ...] = (),
) -> None:
    """Run schemathesis against ``server`` with ``config_text`` (and CLI ``options``, such as
    which operations); assert it ran whole, generated at least ``min_cases`` cases, found
    nothing and the server answered no 5xx. Every operation must have reached data that
    exists, but those of ``gone_after_first``, whose first success removes their data."""
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config_text)
    report = workdir / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--no-color",
            "--config-file",
            str(config_file),
            "run",
            f"{server.url}/openapi.json",
            # Every check is on by default; `--checks all` on the command line would also
            # override the operations' own settings below (the CLI comes first).
            "--report",
            "json",
            "--report-json-path",
            str(report),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        cwd=workdir,
    )
    summary = json.loads(report.read_text())
    output = run.stdout[-6000:] + run.stderr[-2000:]
    print(f"schemathesis: {summary['test_cases']} in {summary['running_time']:.1f} s")
    assert summary["complete"], output
    assert summary["exit_code"] == 0, output
    assert summary["failures"] == [], output
    assert summary["errors"] == [], output
    assert summary["test_cases"]["generated"] >= min_cases, output
    missing = set(summary["warnings"]["missing_test_data"]) - set(gone_after_first)
    assert not missing, output

    metrics = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": API_KEY}).text
    assert not re.search(r'status="5\d\d"', metrics), "the server answered 5xx"
