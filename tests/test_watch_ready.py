"""The service with work beside it (``search_api.extras``): companions start after the
service and stop before its store closes, and ``/ready`` shows the watcher's status it was
handed (with the key only, when a key is set). And the watch flags that make no sense
without ``--watch`` are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from dinoseek.embedder_protocol import ImageEmbedder
from dinoseek.errors import DinoseekError
from dinoseek.settings import Settings
from dinoseek.store import EdgeStore
from dinoseek.watch_status import WatchStatus
from dinoseek_cli.main import main
from search_api.app import create_app
from search_api.extras import ServiceExtras
from tests.fakes import FAKE_LOADER


class Recorder:
    """A companion that notes when it runs, and whether the store was open at its stop."""

    def __init__(self, store: EdgeStore) -> None:
        self.store = store
        self.events: list[str] = []

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        try:
            self.store.count("images")
            self.events.append("stop, store open")
        except DinoseekError:
            self.events.append("stop, store closed")


def test_companions_run_while_the_service_does(
    settings: Settings, embedder: ImageEmbedder, tmp_path: Path
) -> None:
    store = EdgeStore(settings.data_dir)
    store.ensure_collection("images", embedder.space)
    recorder = Recorder(store)
    status = WatchStatus(("/photos",), "events")
    extras = ServiceExtras(companions=(recorder,), watch=status)
    app = create_app(settings, embedder=embedder, store=store, extras=extras)
    with TestClient(app) as client:
        assert recorder.events == ["start"]
        watch = client.get("/ready").json()["watch"]
        assert (watch["phase"], watch["pending"], watch["mode"]) == ("starting", 0, "events")
        status.update(phase="pending", pending=7)
        assert client.get("/ready").json()["watch"]["pending"] == 7
        status.pass_done({"embedded": 7, "points": 7}, pending=0)
        body = client.get("/ready").json()
        assert body["watch"]["phase"] == "idle"
        assert body["watch"]["last_pass"] == {"embedded": 7, "points": 7}
    assert recorder.events == ["start", "stop, store open"]
    with pytest.raises(DinoseekError):
        store.count("images")  # closed with the service, after the companion stopped


def test_without_a_watcher_ready_says_nothing_of_one(
    settings: Settings, embedder: ImageEmbedder
) -> None:
    app = create_app(settings, embedder=embedder, store=EdgeStore(settings.data_dir))
    with TestClient(app) as client:
        assert "watch" not in client.get("/ready").json()


def test_with_a_key_the_watcher_is_shown_to_key_holders_only(
    settings: Settings, embedder: ImageEmbedder
) -> None:
    keyed = Settings(model=settings.model, data_dir=settings.data_dir, api_key="k3y")
    extras = ServiceExtras(watch=WatchStatus(("/photos",), "polling"))
    app = create_app(keyed, embedder=embedder, store=EdgeStore(settings.data_dir), extras=extras)
    with TestClient(app) as client:
        assert client.get("/ready").json() == {"ready": True}
        shown = client.get("/ready", headers={"X-API-Key": "k3y"}).json()
        assert shown["watch"]["mode"] == "polling"


@pytest.mark.parametrize(
    "arguments",
    [
        ["index", "{folder}", "--poll"],
        ["serve", "--labels-from-folders"],
        ["serve", "--poll"],
        ["index", "{folder}", "--watch", "--engine", "ray"],
    ],
)
def test_watch_flags_without_a_watch_are_refused(tmp_path: Path, arguments: list[str]) -> None:
    """Refused before anything is opened or loaded (exit 2, a message naming the flag)."""
    given = [a.format(folder=tmp_path) for a in arguments]
    result = CliRunner().invoke(
        main, [*given, "--data-dir", str(tmp_path / "data")], obj=FAKE_LOADER
    )
    assert result.exit_code == 2, result.output
    assert "--watch" in result.output
    assert not (tmp_path / "data").exists()
