"""The whole state of a ``dinoseek adapt`` run on disk: written atomically every few steps,
and loaded by ``--resume`` only when it was made with the same settings and files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dinoseek.adapt.config import AdaptConfig, StepMetrics
from dinoseek.adapt.losses import CentredSoftmax
from dinoseek.adapt.model import Network
from dinoseek.errors import ConfigError

CHECKPOINT = "checkpoint.pt"


def images_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the training file list (a resumed run must train on the same files)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingParts:
    """What a checkpoint holds besides the step's bookkeeping."""

    student: Network
    teacher: Network
    optimizer: torch.optim.Optimizer
    centre: CentredSoftmax


@dataclass
class TrainingState:
    """The step's bookkeeping: each step's measures, the files that failed, where to start."""

    history: list[StepMetrics]
    failed: dict[str, str]
    start: int


def save_checkpoint(
    directory: Path,
    step: int,
    config: AdaptConfig,
    fingerprint: str,
    parts: TrainingParts,
    state: TrainingState,
) -> None:
    """Write the whole training state atomically (a kill leaves the previous one)."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": step,
        "config": config.to_dict(),
        "images": fingerprint,
        "student": parts.student.state_dict(),
        "teacher": parts.teacher.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "centre": parts.centre.centre,
        "history": [asdict(m) for m in state.history],
        "failed": dict(state.failed),
    }
    partial = directory / (CHECKPOINT + ".partial")
    with open(partial, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, directory / CHECKPOINT)


def load_checkpoint(
    path: Path,
    config: AdaptConfig,
    fingerprint: str,
    parts: TrainingParts,
) -> TrainingState:
    """Load the checkpoint at ``path`` into ``parts`` (``ConfigError`` when there is none, it
    cannot be read, or it was made with other settings or files); its bookkeeping."""
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}; start without --resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same answer
        raise ConfigError(f"--resume: {path} cannot be read ({exc}); start again") from None
    saved = payload.get("config", {})
    differ = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
    if differ:
        raise ConfigError(
            f"--resume: the checkpoint at {path} was made with other settings "
            f"({', '.join(differ)}); resume with the same options, or start again"
        )
    if payload.get("images") != fingerprint:
        raise ConfigError(
            f"--resume: the folder's images changed since the checkpoint at {path}; "
            "resume on the same files, or start again"
        )
    parts.student.load_state_dict(payload["student"])
    parts.teacher.load_state_dict(payload["teacher"])
    parts.optimizer.load_state_dict(payload["optimizer"])
    parts.centre.centre.copy_(payload["centre"])
    history = [StepMetrics(**m) for m in payload["history"]]
    return TrainingState(
        history=history, failed=dict(payload["failed"]), start=int(payload["step"])
    )
