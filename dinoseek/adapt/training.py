"""The self-distillation loop of ``dinoseek adapt`` (DINOv2's ``ssl_meta_arch``, one device).

Each step: the teacher embeds the two global views and its head's logits become targets
(Sinkhorn-Knopp or DINO v1's centring, at a teacher temperature warmed up from 0.04); the
student embeds every view (global ones with iBOT masks when iBOT is on) and is trained with
the DINO loss, KoLeo on its global CLS tokens and, optionally, the iBOT loss; then the teacher
moves towards the student (EMA, momentum on a cosine towards 1). AdamW with a warm-up and
cosine learning rate, a cosine weight decay, layer-wise learning-rate decay, gradient
clipping, and the prototypes frozen during the warm-up, as in the recipe.

Every ``checkpoint_every`` steps (and when a stop is asked for) the whole state is written
atomically, and all randomness is a function of (seed, step), so ``resume`` continues as if
never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from dinoseek.adapt.augment import CropSpec
from dinoseek.adapt.data import Batch, DecodeLimits, StepBatches, batches
from dinoseek.adapt.losses import (
    CentredSoftmax,
    dino_loss,
    entropy,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
)
from dinoseek.adapt.model import (
    HeadSpec,
    Network,
    Trainable,
    build_networks,
    parameter_groups,
    update_teacher,
)
from dinoseek.adapt.schedules import linear_warmup, warmup_cosine
from dinoseek.errors import ConfigError, DinoseekError
from dinoseek.preprocessing import Preprocessing
from dinoseek.torch_embedder import Dinov2Checkpoint, load_dinov2, resolve_device

log = logging.getLogger(__name__)

Centring = Literal["sinkhorn", "centre"]
CHECKPOINT = "checkpoint.pt"


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


@dataclass
class Trained:
    """The outcome of a run: the networks, what each step measured, and the run's figures."""

    student: Network
    teacher: Network
    history: list[StepMetrics]
    failed: dict[str, str]
    seconds: float
    images: int
    data_wait_share: float
    peak_memory_bytes: int
    resumed_from: int


class TrainingStoppedError(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM); the state of ``step`` is saved."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


class TrainingCollapsedError(DinoseekError):
    """The teacher's outputs or the features collapsed."""

    code = "training_collapsed"


def images_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the training file list (a resumed run must train on the same files)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fsencode(path) + b"\0")
    return digest.hexdigest()


def train(
    config: AdaptConfig,
    paths: Sequence[Path],
    checkpoints: Path,
    *,
    limits: DecodeLimits,
    run: RunOptions,
    resume: bool = False,
    on_step: Callable[[StepMetrics], None] | None = None,
    stop: threading.Event | None = None,
    base: Dinov2Checkpoint | None = None,
) -> Trained:
    """Run (or resume) self-distillation on ``paths`` for ``config.steps`` steps, from
    ``base`` when the caller has loaded ``config.model`` already (it is trained in place)."""
    device = resolve_device(run.device)
    torch.manual_seed(config.seed)
    checkpoint = base or load_dinov2(config.model)
    student, teacher = build_networks(
        checkpoint.model,
        config.head,
        config.trainable,
        seed=config.seed,
        gradient_checkpointing=run.gradient_checkpointing,
    )
    student.to(device).train()
    teacher.to(device).eval()
    groups = parameter_groups(student, config.layer_decay)
    parts = _Parts(
        student=student,
        teacher=teacher,
        optimizer=torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999)),
        centre=CentredSoftmax(config.head.prototypes, device),
    )
    state = _State(history=[], failed={}, start=0)
    fingerprint = images_fingerprint(paths)
    if resume:
        state = _load(checkpoints / CHECKPOINT, config, fingerprint, parts)
    step_runner = _Step(config, parts, checkpoint.preprocessing, device)
    guard = _CollapseGuard(run, config)
    dataset = StepBatches(
        paths, batch_size=config.batch_size, spec=config.crops, seed=config.seed, limits=limits
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    waited = 0.0
    step = state.start
    stream = batches(dataset, state.start, config.steps, workers=run.workers,
                     pin_memory=device.type == "cuda")  # fmt: skip
    try:
        while step < config.steps:
            before = time.perf_counter()
            batch = next(stream)
            wait = time.perf_counter() - before
            waited += wait
            state.failed.update(batch.failed)
            metrics = step_runner(step, batch, wait)
            state.history.append(metrics)
            step += 1
            if on_step is not None:
                on_step(metrics)
            guard.check(metrics)
            stopping = stop is not None and stop.is_set()
            if step % run.checkpoint_every == 0 or step == config.steps or stopping:
                _save(checkpoints, step, config, fingerprint, parts, state)
            if stopping and step < config.steps:
                raise TrainingStoppedError(step)
    finally:
        stream.close()
    seconds = time.perf_counter() - started
    ran = config.steps - state.start
    return Trained(
        student=student,
        teacher=teacher,
        history=state.history,
        failed=state.failed,
        seconds=seconds,
        images=ran * config.batch_size,
        data_wait_share=waited / seconds if seconds > 0 else 0.0,
        peak_memory_bytes=_peak_memory(device),
        resumed_from=state.start,
    )


@dataclass(frozen=True)
class _Parts:
    """What a checkpoint holds besides the step's bookkeeping."""

    student: Network
    teacher: Network
    optimizer: torch.optim.Optimizer
    centre: CentredSoftmax


@dataclass
class _State:
    history: list[StepMetrics]
    failed: dict[str, str]
    start: int


class _Step:
    """One optimisation step and its measures."""

    def __init__(
        self,
        config: AdaptConfig,
        parts: _Parts,
        preprocessing: Preprocessing,
        device: torch.device,
    ) -> None:
        self.config = config
        self.student = parts.student
        self.teacher = parts.teacher
        self.optimizer = parts.optimizer
        self.centre = parts.centre
        self.device = device
        self.scale = preprocessing.rescale_factor
        self.mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1)
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
        self.patch_size = int(parts.student.config.patch_size)

    def __call__(self, step: int, batch: Batch, wait: float) -> StepMetrics:
        started = time.perf_counter() - wait
        config = self.config
        lr = warmup_cosine(step, config.steps, config.lr, config.min_lr, config.warmup_steps)
        wd = warmup_cosine(step, config.steps, config.weight_decay, config.weight_decay_end)
        momentum = warmup_cosine(step, config.steps, config.momentum, 1.0)
        temp_warmup = round(config.steps * config.teacher_temp_warmup_fraction)
        teacher_temp = linear_warmup(
            step, temp_warmup, config.warmup_teacher_temp, config.teacher_temp
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
            group["weight_decay"] = wd if group["decays"] else 0.0
        torch.manual_seed(config.seed * 1_000_003 + step)  # drop-path, if the model has any
        global_pixels = self._pixels(batch.global_crops)
        local_pixels = self._pixels(batch.local_crops)
        masks = self._masks(step, global_pixels.shape[0], global_pixels.shape[-1])
        with self._autocast():
            losses, teacher_entropy, spread = self._losses(
                global_pixels, local_pixels, masks, teacher_temp
            )
        loss = losses["dino"] + losses["koleo"] + losses["ibot"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(
            [p for p in self.student.parameters() if p.grad is not None], config.clip_grad
        )
        if step < config.warmup_steps:
            self.student.head.prototypes.grad = None  # as DINOv2 freezes its last layer
        self.optimizer.step()
        update_teacher(self.student, self.teacher, momentum)
        if not torch.isfinite(loss):
            raise TrainingCollapsedError(
                f"the loss is not finite at step {step + 1}; lower --lr and start again"
            )
        seconds = time.perf_counter() - started
        return StepMetrics(
            step=step + 1,
            loss=float(loss.detach()),
            dino=float(losses["dino"].detach()),
            koleo=float(losses["koleo"].detach()),
            ibot=float(losses["ibot"].detach()),
            teacher_entropy=teacher_entropy,
            feature_spread=spread,
            lr=lr,
            weight_decay=wd,
            momentum=momentum,
            teacher_temp=teacher_temp,
            images_per_second=config.batch_size / seconds if seconds > 0 else 0.0,
            data_wait=wait,
        )

    def _losses(
        self,
        global_pixels: torch.Tensor,
        local_pixels: torch.Tensor,
        masks: torch.Tensor | None,
        teacher_temp: float,
    ) -> tuple[dict[str, torch.Tensor], float, float]:
        config = self.config
        with torch.no_grad():
            teacher_cls, teacher_patches = self.teacher(global_pixels)
            teacher_logits = self.teacher.head(teacher_cls)
            targets = self._targets(teacher_logits, teacher_temp)
            raw = torch.softmax(teacher_logits.float() / teacher_temp, dim=-1)
            teacher_entropy = float(entropy(raw.mean(dim=0)))
        student_cls, student_patches = self.student(global_pixels, masks)
        student_logits = self.student.head(student_cls)
        if local_pixels.shape[0]:
            local_cls, _ = self.student(local_pixels)
            local_logits = self.student.head(local_cls)
        else:
            local_logits = student_logits[:0]
        zero = student_logits.new_zeros((), dtype=torch.float32)
        losses = {"dino": dino_loss(student_logits, local_logits, targets), "koleo": zero,
                  "ibot": zero}  # fmt: skip
        if config.koleo_weight:
            losses["koleo"] = config.koleo_weight * sum(
                (koleo_loss(chunk) for chunk in student_cls.chunk(2)), zero
            )
        if masks is not None and config.ibot_weight and bool(masks.any()):
            losses["ibot"] = config.ibot_weight * self._ibot(
                student_patches, teacher_patches, masks, teacher_temp
            )
        with torch.no_grad():
            features = torch.nn.functional.normalize(student_cls.float(), dim=-1)
            spread = float(features.std(dim=0).mean() * features.shape[-1] ** 0.5)
        return losses, teacher_entropy, spread

    def _ibot(
        self,
        student_patches: torch.Tensor,
        teacher_patches: torch.Tensor,
        masks: torch.Tensor,
        teacher_temp: float,
    ) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher.head(teacher_patches[masks])
            targets = sinkhorn_knopp(teacher_logits, teacher_temp)
        student_logits = self.student.head(student_patches[masks])
        per_image = masks.sum(dim=1, keepdim=True).clamp(min=1).float()
        weights = (1.0 / per_image).expand_as(masks)[masks]
        return ibot_loss(student_logits, targets, weights)

    def _targets(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.config.centring == "sinkhorn":
            return sinkhorn_knopp(logits, temperature)
        return self.centre(logits, temperature)

    def _pixels(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 (views, B, H, W, 3) -> normalised float (views * B, 3, H, W), view-major."""
        views, count = crops.shape[:2]
        if views * count == 0:
            return torch.zeros(0, 3, 1, 1, device=self.device)
        pixels = crops.to(self.device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2)
        return (pixels.float() * self.scale - self.mean) / self.std

    def _masks(self, step: int, rows: int, size: int) -> torch.Tensor | None:
        """iBOT masks: half of the global views get a random share (0.1-0.5) of their patches
        masked; seeded by the step."""
        config = self.config
        if not config.ibot_weight:
            return None
        side = size // self.patch_size
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        ratio = torch.empty(rows).uniform_(*config.mask_ratio, generator=generator)
        chosen = torch.rand(rows, generator=generator) < config.mask_probability
        scores = torch.rand(rows, side * side, generator=generator)
        counts = (ratio * side * side).long() * chosen
        ranks = scores.argsort(dim=1).argsort(dim=1)
        return (ranks < counts[:, None]).to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


class _CollapseGuard:
    """Stops a run whose teacher entropy or feature spread stays under its floor after the
    warm-up of the teacher temperature."""

    def __init__(self, run: RunOptions, config: AdaptConfig) -> None:
        self.run = run
        self.after = round(config.steps * config.teacher_temp_warmup_fraction)
        self.low = 0

    def check(self, metrics: StepMetrics) -> None:
        run = self.run
        if metrics.step <= self.after:
            return
        entropy_low = metrics.teacher_entropy < run.min_teacher_entropy
        spread_low = metrics.feature_spread < run.min_feature_spread
        self.low = self.low + 1 if entropy_low or spread_low else 0
        if self.low < run.collapse_patience:
            return
        what = (
            f"teacher entropy {metrics.teacher_entropy:.3f} < {run.min_teacher_entropy}"
            if entropy_low
            else f"feature spread {metrics.feature_spread:.4f} < {run.min_feature_spread}"
        )
        raise TrainingCollapsedError(
            f"training collapsed at step {metrics.step}: {what} for {self.low} steps in a row. "
            "Lower --lr, train fewer blocks (--train-blocks), raise --momentum, or keep KoLeo "
            "on; the last checkpoint is kept"
        )


def _save(
    directory: Path,
    step: int,
    config: AdaptConfig,
    fingerprint: str,
    parts: _Parts,
    state: _State,
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


def _load(
    path: Path,
    config: AdaptConfig,
    fingerprint: str,
    parts: _Parts,
) -> _State:
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
    return _State(history=history, failed=dict(payload["failed"]), start=int(payload["step"]))


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in value.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, dict):
        return _plain(value)
    if isinstance(value, list | tuple):
        return [_plain_value(v) for v in value]
    return value
