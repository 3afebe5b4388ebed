"""Real SIGKILLs at chosen points of a dinoseek process (a test harness, not part of dinoseek).

A ``sitecustomize`` module on the child's ``PYTHONPATH`` counts the calls that change state:
the embedded store's writes (``upsert``, ``set_payload``, ``delete``, ``optimize``) and the
file system's renames and removals (``os.rename``, ``os.replace``, ``shutil.rmtree``). With
``DINOSEEK_KILL_LOG`` it records them (a clean run's timeline); with ``DINOSEEK_KILL_AT=N``
the process sends itself SIGKILL just before the N-th: it dies exactly as ``kill -9`` from
outside would at that moment, with no cleanup of any kind. Only the first process counts (its
decode workers inherit the environment but not the role).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

SITECUSTOMIZE = """
import functools, os, shutil, signal, threading

if os.environ.get("DINOSEEK_KILL_PID", str(os.getpid())) == str(os.getpid()) and (
    os.environ.get("DINOSEEK_KILL_LOG") or os.environ.get("DINOSEEK_KILL_AT")
):
    os.environ["DINOSEEK_KILL_PID"] = str(os.getpid())
    _log = os.environ.get("DINOSEEK_KILL_LOG")
    _at = int(os.environ.get("DINOSEEK_KILL_AT") or 0)
    _count = [0]
    _lock = threading.Lock()

    def _event(name):
        with _lock:
            _count[0] += 1
            if _log:
                with open(_log, "a") as handle:
                    handle.write(name + "\\n")
            if _count[0] == _at:
                os.kill(os.getpid(), signal.SIGKILL)

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
