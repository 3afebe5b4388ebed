"""What a folder watcher is doing, for whoever shows it.

The watcher (``indexer.watch``) updates one ``WatchStatus``; the service reads it for
``/ready`` and the page. The command group that composes them hands the same object to both,
so neither app imports the other and nothing is global.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

WatchPhase = Literal["starting", "indexing", "pending", "idle", "stopped"]
WatchMode = Literal["events", "polling"]


@dataclass(frozen=True)
class WatchState:
    """One look at a watcher.

    ``phase``: ``starting`` (the first pass has not begun), ``indexing`` (a pass runs),
    ``pending`` (changes seen, waiting until they settle), ``idle`` or ``stopped``.
    ``pending``: changed paths waiting for a pass (files still being written included).
    ``last_pass``: what the last finished pass did (the counts of ``dinoseek index``).
    ``last_error``: why the last pass failed, if it did (the next change retries).
    """

    folders: tuple[str, ...]
    mode: WatchMode
    phase: WatchPhase = "starting"
    pending: int = 0
    passes: int = 0
    last_pass_at: str | None = None
    last_pass: dict[str, int] | None = None
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return {
            "folders": list(self.folders),
            "mode": self.mode,
            "phase": self.phase,
            "pending": self.pending,
            "passes": self.passes,
            "last_pass_at": self.last_pass_at,
            "last_pass": self.last_pass,
            "last_error": self.last_error,
        }

    def describe(self) -> str:
        """One line for people: ``idle``, ``12 pending``, ``indexing``..."""
        text = f"{self.pending:,} pending" if self.phase == "pending" else self.phase
        if self.phase == "indexing" and self.pending:
            text += f" ({self.pending:,} more pending)"
        if self.last_error:
            text += f"; last pass failed: {self.last_error}"
        return text


class WatchStatus:
    """The current ``WatchState``, updated by the watcher's threads, read by anyone."""

    def __init__(self, folders: tuple[str, ...], mode: WatchMode) -> None:
        self._state = WatchState(folders=folders, mode=mode)
        self._lock = threading.Lock()

    def snapshot(self) -> WatchState:
        """The state now."""
        with self._lock:
            return self._state

    def update(self, **changes: Any) -> None:
        """Replace some fields of the state (``WatchState``'s names)."""
        with self._lock:
            self._state = replace(self._state, **changes)

    def pass_done(self, counts: dict[str, int], *, pending: int) -> None:
        """A pass finished: its counts, the time, and what is still pending."""
        self._pass_ended(pending, last_pass=counts, last_error=None)

    def pass_failed(self, error: str, *, pending: int) -> None:
        """A pass ended with an error (the store's, say): kept until a pass succeeds."""
        self._pass_ended(pending, last_error=error)

    def _pass_ended(self, pending: int, **outcome: Any) -> None:
        with self._lock:
            self._state = replace(
                self._state,
                phase="pending" if pending else "idle",
                pending=pending,
                passes=self._state.passes + 1,
                last_pass_at=now_text(),
                **outcome,
            )


def now_text() -> str:
    """UTC now, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
