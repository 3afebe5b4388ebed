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
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dinoseek.adapt.checkpoint import (
    CHECKPOINT,
    TrainingParts,
    TrainingState,
    images_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from dinoseek.adapt.config import AdaptConfig, RunOptions, StepMetrics
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
    Network,
    build_networks,
    parameter_groups,
    update_teacher,
)
from dinoseek.adapt.schedules import linear_warmup, warmup_cosine
from dinoseek.errors import DinoseekError
from dinoseek.preprocessing import Preprocessing
from dinoseek.torch_embedder import Dinov2Checkpoint, load_dinov2, resolve_device

log = logging.getLogger(__name__)


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
    parts = TrainingParts(
        student=student,
        teacher=teacher,
        optimizer=torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999)),
        centre=CentredSoftmax(config.head.prototypes, device),
    )
    state = TrainingState(history=[], failed={}, start=0)
    fingerprint = images_fingerprint(paths)
    if resume:
        state = load_checkpoint(checkpoints / CHECKPOINT, config, fingerprint, parts)
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
                save_checkpoint(checkpoints, step, config, fingerprint, parts, state)
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


class _Step:
    """One optimisation step and its measures."""

    def __init__(
        self,
        config: AdaptConfig,
        parts: TrainingParts,
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


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
