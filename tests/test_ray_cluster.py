"""``dinoseek index --engine ray --ray-address ADDRESS`` on a simulated cluster of two nodes
(``ray.cluster_utils.Cluster``: two raylets on this machine, one CPU each). Both nodes see
this machine's files, so the shared file system is a given here; what a node that cannot see
a path does is tested in ``test_ray_units.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import write_tree
from tests.ray_support import ray_env
from tests.test_kill_points import state_of
from tests.test_ray_engine import assert_same_collection, index

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A head and a worker node of one CPU each; yields the cluster's address."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("PYTHONPATH")
    os.environ.update(ray_env())
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def test_two_nodes_build_what_the_local_engine_builds(two_nodes: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_tree(photos, per_class=12)
    local = index(photos, tmp_path / "local")
    distributed = index(
        photos, tmp_path / "ray", "--engine", "ray", "--ray-address", two_nodes, "--ray-actors", "2"
    )
    assert ray.is_initialized() is False, "the run did not disconnect from the cluster"
    assert distributed["embedded"] == local["embedded"] == 24
    assert_same_collection(state_of(tmp_path / "ray"), state_of(tmp_path / "local"))
    ray.init(address=two_nodes)
    alive = [node for node in ray.nodes() if node["Alive"]]
    ray.shutdown()
    assert len(alive) == 2, "a node died during the run"
