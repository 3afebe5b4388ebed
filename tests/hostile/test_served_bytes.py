"""What ``GET /points/{id}/image`` serves is the content the point was indexed from, whatever
was done to its file since: a link to a private file of the same size and mtime, a same-size
change with the mtime put back, a FIFO (in place, or flipped in while requests read), a
directory, a device, a socket, nothing. Each is a 404 with the error body, logged and counted
in /metrics, never a 500, and no request leaves a thread blocked.

The real app (ASGI client) on a real embedded store, over files each test makes in its own
temporary folder; the stand-in model (these tests are about files, not the model).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import re
import socket
import stat
import threading
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore, point_id_for_sha256
from search_api.app import create_app
from tests.helpers import encode, photo
from tests.indexing import index_tree, indexed_tree
from tests.test_api import make_client, serving, upload

UNAVAILABLE = "image_unavailable"
HANG_S = 60


@pytest.fixture
def indexed(tmp_path: Path, embedder: ImageEmbedder) -> tuple[Path, Path]:
    """(data dir, photos dir): two photos indexed into a store of this test's own."""
    return indexed_tree(tmp_path / "index", embedder, per_class=2, classes=("a",))


def first_photo(indexed: tuple[Path, Path]) -> Path:
    return sorted(indexed[1].rglob("*.jpg"))[0]


def point_of(data: bytes) -> str:
    return point_id_for_sha256(hashlib.sha256(data).hexdigest())


def refusals(client: TestClient, reason: str) -> float:
    """The /metrics counter of files refused for ``reason`` (a failure if it is missing)."""
    text = client.get("/metrics").text
    pattern = rf'^dinoseek_served_file_refusals_total\{{reason="{reason}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"no refusal counter for {reason!r} in /metrics"
    return float(found.group(1))


def assert_unavailable(client: TestClient, point_id: str, *, secret: bytes = b"") -> None:
    """The image and its thumbnail are both a 404 with the error body (and never carry
    ``secret``)."""
    for params in ({}, {"size": 64}):
        response = client.get(f"/points/{point_id}/image", params=params)
        assert response.status_code == 404, (params, response.status_code)
        error = response.json()["error"]
        assert error["code"] == UNAVAILABLE
        assert "re-run `dinoseek index`" in error["message"]
        if secret:
            assert secret not in response.content


def same_size_image(size: int, secret: bytes) -> bytes:
    """Another (smaller) JPEG, padded with ``secret`` to ``size`` bytes: it decodes as an
    image (decoders ignore what follows the end marker) and its bytes are recognisable."""
    image = encode(photo(999, (48, 32)))
    padding = (secret * size)[: size - len(image)]
    assert len(image) < size
    return image + padding


def test_a_link_to_a_private_file_of_the_same_size_and_mtime_is_not_served(
    indexed: tuple[Path, Path],
    embedder: ImageEmbedder,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The audit's reproduction: the image replaced by a symbolic link to a private file of
    the same size, its mtime copied with os.utime (``stat()`` follows the link)."""
    path = first_photo(indexed)
    original = path.read_bytes()
    point_id = point_of(original)
    private = tmp_path / "private" / "secret.jpg"
    private.parent.mkdir()
    secret = b"PRIVATE-KEY-MATERIAL"
    private.write_bytes(same_size_image(len(original), secret))
    indexed_stat = path.stat()
    path.unlink()
    path.symlink_to(private)
    os.utime(private, ns=(indexed_stat.st_atime_ns, indexed_stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (
        indexed_stat.st_size,
        indexed_stat.st_mtime_ns,
    )
    with make_client(embedder, indexed[0]) as client:
        payload_before = client.get(f"/points/{point_id}").json()["payload"]
        with caplog.at_level(logging.WARNING, logger="search_api"):
            assert_unavailable(client, point_id, secret=secret)
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(logged) == 2
        assert all(point_id in line and "content_changed" in line for line in logged)
        assert refusals(client, "content_changed") == 2
        # A refused read writes nothing: the point is as it was.
        assert client.get(f"/points/{point_id}").json()["payload"] == payload_before
        # The indexed content put back (through the same link) is served again.
        private.write_bytes(original)
        served = client.get(f"/points/{point_id}/image")
        assert served.status_code == 200
        assert served.content == original


def test_a_same_size_change_with_the_mtime_put_back_is_not_served(
    indexed: tuple[Path, Path], embedder: ImageEmbedder
) -> None:
    path = first_photo(indexed)
    original = path.read_bytes()
    point_id = point_of(original)
    indexed_stat = path.stat()
    secret = b"NEW-CONTENT"
    path.write_bytes(same_size_image(len(original), secret))
    os.utime(path, ns=(indexed_stat.st_atime_ns, indexed_stat.st_mtime_ns))
    with make_client(embedder, indexed[0]) as client:
        assert_unavailable(client, point_id, secret=secret)
        assert refusals(client, "content_changed") == 2


def test_a_large_file_is_served_from_its_checked_copy(
    indexed: tuple[Path, Path], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """A file larger than what is kept in memory is checked whole, then sent from the copy
    (with its length); changed in its last byte, size and mtime kept, it is refused."""
    noise = np.random.default_rng(0).integers(0, 256, (900, 800, 3), dtype=np.uint8)
    big = indexed[1] / "a" / "noise.png"
    big.write_bytes(encode(Image.fromarray(noise), "PNG"))  # about 2 MB, incompressible
    data_dir, _ = index_tree(tmp_path / "index", embedder)
    original = big.read_bytes()
    assert len(original) > 2 * (1 << 20)
    point_id = point_of(original)
    with make_client(embedder, data_dir) as client:
        served = client.get(f"/points/{point_id}/image")
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/png"
        assert served.headers["content-length"] == str(len(original))
        assert served.content == original
        thumbnail = client.get(f"/points/{point_id}/image", params={"size": 32})
        assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 32
        indexed_stat = big.stat()
        changed = bytearray(original)
        changed[-1] ^= 0xFF
        big.write_bytes(bytes(changed))
        os.utime(big, ns=(indexed_stat.st_atime_ns, indexed_stat.st_mtime_ns))
        assert_unavailable(client, point_id)
        assert refusals(client, "content_changed") == 2


def test_a_point_is_served_from_its_file_that_still_holds_its_content(
    indexed: tuple[Path, Path], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """Two copies of one image are one point with two files: the first changed (same size
    and mtime), the second is served, and the first one's refusal is counted."""
    path = first_photo(indexed)
    original = path.read_bytes()
    copy = indexed[1] / "a" / "zz_copy.jpg"
    copy.write_bytes(original)
    data_dir, _ = index_tree(tmp_path / "index", embedder)
    point_id = point_of(original)
    indexed_stat = path.stat()
    path.write_bytes(same_size_image(len(original), b"X"))
    os.utime(path, ns=(indexed_stat.st_atime_ns, indexed_stat.st_mtime_ns))
    with make_client(embedder, data_dir) as client:
        files = [f["path"] for f in client.get(f"/points/{point_id}").json()["payload"]["files"]]
        assert files == sorted([str(path), str(copy)])
        served = client.get(f"/points/{point_id}/image")
        assert served.status_code == 200
        assert served.content == original
        assert refusals(client, "content_changed") == 1


def make_device(path: Path) -> None:
    """A character device node like /dev/zero (endless zeros), made in the test's folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")


def make_socket(path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """A listening Unix socket at ``path`` (bound by its short relative name: socket paths
    are limited to about 100 bytes)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    monkeypatch.chdir(path.parent)
    server.bind(path.name)
    server.listen()
    return server


@pytest.mark.parametrize(
    ("replacement", "reason"),
    [
        ("fifo", "not_a_regular_file"),
        ("directory", "not_a_regular_file"),
        ("device", "not_a_regular_file"),
        ("socket", "not_a_regular_file"),
        ("nothing", "file_not_found"),
    ],
)
def test_what_is_not_a_regular_file_is_a_404_and_blocks_nothing(
    indexed: tuple[Path, Path],
    embedder: ImageEmbedder,
    monkeypatch: pytest.MonkeyPatch,
    replacement: str,
    reason: str,
) -> None:
    """More requests than there are decode threads: none blocks one (a FIFO nobody writes
    to would hang a blocking open for good), and the model routes still answer after."""
    path = first_photo(indexed)
    original = path.read_bytes()
    point_id = point_of(original)
    path.unlink()
    listening = None
    if replacement == "fifo":
        os.mkfifo(path)
    elif replacement == "directory":
        path.mkdir()
    elif replacement == "device":
        make_device(path)
    elif replacement == "socket":
        listening = make_socket(path, monkeypatch)
    rounds = min(8, os.cpu_count() or 2) + 2  # more than the decode threads
    try:
        with make_client(embedder, indexed[0], request_timeout_s=10) as client:
            for _ in range(rounds):
                assert_unavailable(client, point_id)
            assert refusals(client, reason) == 2 * rounds
            query = client.post("/search", files=upload(original))
            assert query.status_code == 200
    finally:
        if listening is not None:
            listening.close()


def release_fifo_readers(fifo: Path) -> None:
    """Open ``fifo`` for writing and close it, which ends any open or read blocked on it
    (only a server that opens FIFOs with a blocking open ever needs this)."""
    for _ in range(100):
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody is waiting on it
            return
        os.close(descriptor)


def test_a_fifo_flipped_in_while_requests_read_never_blocks_and_never_fails(
    indexed: tuple[Path, Path], embedder: ImageEmbedder, tmp_path: Path
) -> None:
    """The audit's race: a thread swaps the indexed file and a FIFO back and forth (each
    swap an atomic rename), while images and thumbnails are asked for. Each answer is the
    image or a 404: never a request cut off at its deadline (a thread blocked in ``open``)
    nor a 500; and afterwards a query still gets through the decode threads."""
    path = first_photo(indexed)
    original = path.read_bytes()
    point_id = point_of(original)
    image_link, fifo = tmp_path / "image.keep", tmp_path / "fifo.keep"
    os.link(path, image_link)  # the indexed file itself: its size and mtime are the indexed
    os.mkfifo(fifo)
    staged = tmp_path / "staged"
    stop = threading.Event()
    turns = [0]

    def flip() -> None:  # the FIFO first: a rename onto a link of the same file does nothing
        while not stop.is_set():
            os.link(image_link if turns[0] % 2 else fifo, staged)
            os.replace(staged, path)
            turns[0] += 1

    settings = Settings(model=embedder.model_id, data_dir=indexed[0], request_timeout_s=10)
    app = create_app(settings, embedder=embedder, store=EdgeStore(indexed[0]))
    statuses: Counter[int | str] = Counter()

    async def race() -> httpx.Response:
        async with serving(app) as http:
            flipper = threading.Thread(target=flip, daemon=True)
            flipper.start()
            try:
                for turn in range(300):
                    params = {"size": 64} if turn % 2 else {}
                    asked = http.get(f"/points/{point_id}/image", params=params)
                    try:  # a hang detector far past the request's own deadline (10 s)
                        response = await asyncio.wait_for(asked, HANG_S)
                    except TimeoutError:
                        statuses["no answer"] += 1
                        break
                    statuses[response.status_code] += 1
                    if response.status_code not in (200, 404):
                        break
                    if response.status_code == 200 and not params:
                        assert response.content == original
            finally:
                stop.set()
                flipper.join()
                release_fifo_readers(fifo)
            os.replace(image_link, path)
            return await http.post("/search", files=upload(original))

    query = asyncio.run(race())
    assert turns[0] >= 2, "the flipping thread stopped"
    assert set(statuses) <= {200, 404}, statuses
    assert query.status_code == 200
