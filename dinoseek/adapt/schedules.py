"""Per-step schedules, as in DINOv2's ``CosineScheduler``: a linear warm-up, then a cosine
from the base value to the final one."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, base: float, final: float, warmup: int = 0) -> float:
    """The value at ``step`` of ``total``: 0 -> base linearly over ``warmup`` steps, then a
    cosine from base to final over the rest."""
    if step < warmup:
        return base * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup: int, start: float, end: float) -> float:
    """start -> end linearly over ``warmup`` steps, then end (the teacher temperature)."""
    if step >= warmup:
        return end
    return start + (end - start) * step / warmup
