"""Real SIGKILLs and pauses at chosen points of a dinoseek process (a test harness, not part
of dinoseek).

A ``sitecustomize`` module on the child's ``PYTHONPATH`` counts the calls that change state:
the embedded store's writes (``upsert``, ``set_payload``, ``delete``, ``optimize``) and the
file system's renames and removals (``os.rename``, ``os.replace``, ``shutil.rmtree``). With
``DINOSEEK_KILL_LOG`` it records them (a clean run's timeline); with ``DINOSEEK_KILL_AT=N``
the process sends itself SIGKILL just before the N-th: it dies exactly as ``kill -9`` from
outside would at that moment, with no cleanup of any kind. With ``DINOSEEK_PAUSE_AT=N`` and
``DINOSEEK_PAUSE_FILE=F`` it stops just before the N-th instead: it creates ``F.paused`` and
waits until the test creates ``F.go`` (``Pause``), so that whatever the test does meanwhile
(a signal, a killed worker) lands at that point of the work on any machine, fast or busy.
``DINOSEEK_KILL_KIND`` counts only the events of one kind (``store.upsert``...). Only the
first process counts (its decode workers inherit the environment but not the role).
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SITECUSTOMIZE = """
import functools, os, shutil, signal, threading, time

if os.environ.get("DINOSEEK_KILL_PID", str(os.getpid())) == str(os.getpid()) and (
    os.environ.get("DINOSEEK_KILL_LOG")
    or os.environ.get("DINOSEEK_KILL_AT")
    or os.environ.get("DINOSEEK_PAUSE_AT")
):
    os.environ["DINOSEEK_KILL_PID"] = str(os.getpid())
    _log = os.environ.get("DINOSEEK_KILL_LOG")
    _at = int(os.environ.get("DINOSEEK_KILL_AT") or 0)
    _pause_at = int(os.environ.get("DINOSEEK_PAUSE_AT") or 0)
    _pause_file = os.environ.get("DINOSEEK_PAUSE_FILE", "")
    _kind = os.environ.get("DINOSEEK_KILL_KIND")
    _count = [0]
    _lock = threading.Lock()

    def _pause():
        open(_pause_file + ".paused", "w").close()
        while not os.path.exists(_pause_file + ".go"):
            time.sleep(0.02)

    def _event(name):
        with _lock:
            if _log:
                with open(_log, "a") as handle:
                    handle.write(name + "\\n")
            if _kind and name != _kind:
                return
            _count[0] += 1
            if _count[0] == _at:
                os.kill(os.getpid(), signal.SIGKILL)
            if _count[0] == _pause_at:
                _pause()

    def _wrap(owner, attr, name):
        original = getattr(owner, attr)

        @functools.wraps(original)
        def counted(*args, **kwargs):
            _event(name)
            return original(*args, **kwargs)

        setattr(owner, attr, counted)

    _wrap(os, "rename", "os.rename")
    _wrap(os, "replace", "os.replace")
    _wrap(shutil, "rmtree", "shutil.rmtree")
    from dinoseek.store.edge import EdgeStore

    for _name in ("upsert", "set_payload", "delete", "optimize"):
        _wrap(EdgeStore, _name, "store." + _name)
"""


def harness_env(site: Path, repo: Path) -> dict[str, str]:
    """The environment that loads the harness (``site`` gets its ``sitecustomize.py``)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), str(repo), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def read_events(log: Path) -> list[str]:
    """The events a clean run recorded, in order."""
    return log.read_text().splitlines() if log.exists() else []


def kill_points(events: Sequence[str], *, per_kind: int, seed: int) -> dict[str, list[int]]:
    """For each kind of event, up to ``per_kind`` seeded positions (1-based, in the whole
    run) just before which to kill; every position of a kind that has fewer."""
    rng = random.Random(seed)
    chosen: dict[str, list[int]] = {}
    for kind in sorted(set(events)):
        positions = [i + 1 for i, event in enumerate(events) if event == kind]
        chosen[kind] = sorted(rng.sample(positions, min(per_kind, len(positions))))
    return chosen


def kill_env(kind: str, at: int) -> dict[str, str]:
    """The variables that kill a harnessed process just before its ``at``-th ``kind`` event."""
    return {"DINOSEEK_KILL_KIND": kind, "DINOSEEK_KILL_AT": str(at)}


@dataclass(frozen=True)
class Pause:
    """A harnessed process held just before its ``at``-th ``kind`` event until ``release``.

    While it waits, the test acts (a signal, a killed or stopped worker): the act lands
    with the work at that point, however fast or busy the machine is.
    """

    file: Path
    kind: str
    at: int

    def env(self) -> dict[str, str]:
        """The variables that make a harnessed process pause here."""
        return {
            "DINOSEEK_KILL_KIND": self.kind,
            "DINOSEEK_PAUSE_AT": str(self.at),
            "DINOSEEK_PAUSE_FILE": str(self.file),
        }

    def wait(self, process: subprocess.Popen[str], timeout_s: float = 240) -> None:
        """Until ``process`` has paused; fails if it ends first (it never reached the
        event). The timeout only catches a process that is stuck."""
        deadline = time.monotonic() + timeout_s
        paused = self.file.with_name(self.file.name + ".paused")
        while not paused.exists():
            if process.poll() is not None:
                raise AssertionError(f"the process ended before {self.kind} #{self.at}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {self.kind} #{self.at} within {timeout_s} s")
            time.sleep(0.02)

    def release(self) -> None:
        """Let the paused process go on."""
        self.file.with_name(self.file.name + ".go").touch()
