"""What a run of ``dinoseek adapt`` is told (``AdaptConfig``: everything that decides its
numbers; ``RunOptions``: how it executes) and what each of its steps measures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dinoseek.adapt.augment import CropSpec
from dinoseek.adapt.model import HeadSpec, Trainable

Centring = Literal["sinkhorn", "centre"]


@dataclass(frozen=True)
class AdaptConfig:
    """Everything that decides the numbers of a run (a resumed run must match it)."""

    model: str
    steps: int
    batch_size: int = 32
    crops: CropSpec = field(default_factory=CropSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    trainable: Trainable = field(default_factory=Trainable)
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    layer_decay: float = 0.9
    momentum: float = 0.992
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_fraction: float = 0.1
    teacher_temp_warmup_fraction: float = 0.3
    koleo_weight: float = 0.1
    ibot_weight: float = 0.0
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    centring: Centring = "sinkhorn"
    clip_grad: float = 3.0
    seed: int = 0

    @property
    def warmup_steps(self) -> int:
        return round(self.steps * self.warmup_fraction)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return _plain(asdict(self))


@dataclass(frozen=True)
class RunOptions:
    """How a run executes (none of it changes the numbers, except the device's arithmetic)."""

    device: str = "auto"
    workers: int = 1
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    min_teacher_entropy: float = 0.5
    min_feature_spread: float = 0.02
    collapse_patience: int = 10


@dataclass(frozen=True)
class StepMetrics:
    """What one step measured."""

    step: int
    loss: float
    dino: float
    koleo: float
    ibot: float
    teacher_entropy: float
    feature_spread: float
    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    images_per_second: float
    data_wait: float


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in value.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, dict):
        return _plain(value)
    if isinstance(value, list | tuple):
        return [_plain_value(v) for v in value]
    return value
