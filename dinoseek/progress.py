"""Progress of a long run: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("dinoseek.progress")


class Progress:
    """Counts processed items against a total and shows rate and ETA."""

    def __init__(
        self,
        total: int,
        *,
        description: str,
        mode: str = "auto",
        interval_s: float = 10.0,
        unit: str = "img",
    ) -> None:
        """``mode``: ``bar``, ``log``, ``off``, or ``auto`` (bar on a terminal, else log);
        ``unit``: what is counted."""
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.total = total
        self.description = description
        self.unit = unit
        self.mode = mode
        self.interval_s = interval_s
        self.done = 0
        self._started = time.perf_counter()
        self._last_log = self._started
        self._bar: Any = None
        self._postfix = ""
        if mode == "bar" and total:
            self._bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def advance(self, count: int = 1) -> None:
        """Mark ``count`` more items as processed."""
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self.mode == "log":
            now = time.perf_counter()
            if now - self._last_log >= self.interval_s:
                self._last_log = now
                log.info("%s", self.status_line(now))

    def set_postfix(self, text: str) -> None:
        """Measures shown after the count (e.g. a loss), updated with each advance."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def status_line(self, now: float | None = None) -> str:
        """E.g. ``indexing: 1,200/10,000 (12%), 54.1 img/s, ETA 2m43s``."""
        elapsed = (now or time.perf_counter()) - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        line = f"{self.description}: {self.done:,}/{self.total:,}"
        if self.total:
            line += f" ({100 * self.done / self.total:.0f}%)"
        line += f", {rate:.1f} {self.unit}/s"
        if rate > 0 and self.total > self.done:
            line += f", ETA {format_duration((self.total - self.done) / rate)}"
        if self._postfix:
            line += f"; {self._postfix}"
        return line

    def close(self) -> None:
        """Finish the bar (or the log)."""
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.total:
            log.info("%s", self.status_line())


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
