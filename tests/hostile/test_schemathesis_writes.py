"""A bounded schemathesis run of the routes that add and delete points and delete or rename
collections (tag ``writes``), against the real server with the API key on, on a throwaway
data directory they may change: an indexed collection, and a scratch one that the run may
rename away or delete. Built as ``test_schemathesis.py`` is (its runner and its checks): no
failure, no 5xx.

The stand-in model serves (this run is about the HTTP surface, not the model).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.runtime import ModelPolicy, Runtime
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from tests.helpers import encode, photo
from tests.hostile.test_schemathesis import (
    API_KEY,
    MAX_EXAMPLES,
    REQUEST_TIMEOUT_S,
    SEED,
    TIME_LIMIT_S,
    run_schemathesis,
)
from tests.indexing import indexed_tree
from tests.live_server import LiveServer, live_server

MIN_CASES = 100  # what this seed and cap generate is well above; fewer means a broken run


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, embedder: ImageEmbedder
) -> Iterator[tuple[LiveServer, str]]:
    """(the server, an indexed point's id); a scratch collection holds an added image."""
    root = tmp_path_factory.mktemp("schemathesis-writes")
    indexed_tree(root, embedder, per_class=3, classes=("cats", "dogs"))
    settings = Settings(model=embedder.model_id, data_dir=root / "data", api_key=API_KEY)  # type: ignore[arg-type]
    runtime = Runtime.open(
        settings,
        collection="optional",
        policy=ModelPolicy(purpose="serve"),
        store=EdgeStore(root / "data"),
        embedder=embedder,
    )
    with live_server(runtime) as server:
        headers = {"X-API-Key": API_KEY}
        indexed = httpx.get(f"{server.url}/points", params={"limit": 1}, headers=headers)
        added = httpx.post(
            f"{server.url}/points",
            params={"collection": "scratch"},
            files={"image": ("added.png", encode(photo(77), "PNG"))},
            headers=headers,
        )
        added.raise_for_status()
        yield server, indexed.json()["points"][0]["id"]


def config(indexed_id: str) -> str:
    """The run's schemathesis.toml: the statuses each operation may answer to data that fit
    its schema, for reasons no schema can state."""
    return f"""
seed = {SEED}
workers = 1
request-timeout = {REQUEST_TIMEOUT_S}
headers = {{ "X-API-Key" = "{API_KEY}" }}

[generation]
max-examples = {MAX_EXAMPLES}

# The indexed point: refused (409, its file is in an indexed folder) whatever the run does;
# the scratch collection: renamed or deleted once, then unknown (404).
[parameters]
point_id = "{indexed_id}"
name = "scratch"
collection = "images"

[checks]
negative_data_rejection.expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]

# Bytes that fit the schema are rarely an image: 415 (no image signature) and 422 (cannot be
# decoded) are the right answers to them; 409 for a collection of another model.
[[operations]]
include-name = "POST /points"
checks.positive_data_acceptance.expected-statuses = ["2xx", 409, 413, 415, 422]

# The indexed point is refused (409); an id of no point is a 404.
[[operations]]
include-name = "DELETE /points/{{point_id}}"
checks.positive_data_acceptance.expected-statuses = ["2xx", 404, 409]

# A new name may be taken (409).
[[operations]]
include-path-regex = "^/collections/"
checks.positive_data_acceptance.expected-statuses = ["2xx", 404, 409]
"""


@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_schemathesis_finds_no_failure_on_the_write_routes(
    served: tuple[LiveServer, str], tmp_path: Path
) -> None:
    server, indexed_id = served
    text = config(indexed_id)
    run_schemathesis(
        server,
        text,
        tmp_path,
        "--include-tag",
        "writes",
        min_cases=MIN_CASES,
        gone_after_first=("DELETE /collections/{name}",),  # the scratch collection, deleted
    )
    # The indexed collection was never the run's to change, and it is whole.
    headers = {"X-API-Key": API_KEY}
    still = httpx.get(f"{server.url}/points/{indexed_id}", headers=headers)
    assert still.status_code == 200
