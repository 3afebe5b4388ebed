"""What the command group runs beside the service, in the same process (``create_app``'s
``extras``): the service never imports the app that provides it.

``dinoseek serve --watch`` passes a folder watcher (the indexer's) as a companion, on the same
runtime and so the same store handle (an embedded store opens in one process only), and the
watcher's ``WatchStatus``, which ``/ready`` and the page show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dinoseek.watch_status import WatchStatus


class Companion(Protocol):
    """Work beside the service: started once the service is, stopped (and waited for)
    before the runtime closes."""

    def start(self) -> None:
        """Start, without blocking."""
        ...

    def stop(self) -> None:
        """Stop, and return once stopped."""
        ...


@dataclass(frozen=True)
class ServiceExtras:
    """``companions`` to run beside the service, and the ``watch`` status it reports."""

    companions: tuple[Companion, ...] = ()
    watch: WatchStatus | None = None
