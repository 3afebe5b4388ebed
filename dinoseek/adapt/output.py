"""What ``dinoseek adapt`` leaves: the teacher's backbone as a plain DINOv2 checkpoint
(``save_pretrained``), the base model's processor config, a model card and the step log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dinoseek.adapt.config import AdaptConfig, StepMetrics
from dinoseek.adapt.model import Network, merged_backbone
from dinoseek.synthetic import quiet_transformers
from dinoseek.torch_embedder import ADAPTATION_KEY

LOG = "adapt-log.jsonl"
SUMMARY = "adapt-summary.json"
CARD = "README.md"


def save_model(
    teacher: Network, processor_config: Mapping[str, Any], base: str, directory: Path
) -> None:
    """Write the teacher's backbone and the processor config, loadable by
    ``AutoModel.from_pretrained(directory)`` and by every dinoseek command."""
    directory.mkdir(parents=True, exist_ok=True)
    backbone: Any = merged_backbone(teacher)
    setattr(backbone.config, ADAPTATION_KEY, {"id": weights_hash(backbone), "base": base})
    with quiet_transformers():
        backbone.save_pretrained(directory)
    config = dict(processor_config)
    (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of the weights (names and values): the adapted model's identity."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_log(history: Sequence[StepMetrics], directory: Path) -> None:
    """One JSON line per step (the loss curves)."""
    with open(directory / LOG, "w", encoding="utf-8") as handle:
        for metrics in history:
            handle.write(json.dumps(asdict(metrics)) + "\n")


def write_summary(summary: Mapping[str, Any], directory: Path) -> None:
    """The run's summary (also what ``--json`` prints)."""
    (directory / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")


def model_card(config: AdaptConfig, summary: Mapping[str, Any], comparison: str) -> str:
    """A short Markdown model card: base model, images, steps, losses, before and after."""
    trainable = config.trainable
    trained = {
        "blocks": f"the last {trainable.blocks} block(s) and the final norm",
        "lora": f"LoRA adapters of rank {trainable.lora_rank} (merged into the weights)",
        "all": "the whole backbone",
    }[trainable.mode]
    losses = ["DINO (CLS)"]
    if config.koleo_weight:
        losses.append(f"KoLeo (weight {config.koleo_weight})")
    if config.ibot_weight:
        losses.append(f"iBOT masked patches (weight {config.ibot_weight})")
    lines = [
        "# A DINOv2 adapted by `dinoseek adapt`",
        "",
        f"- Base model: `{config.model}`",
        f"- Images: {summary['images']} from `{summary['folder']}`"
        f" ({summary['unusable_images']} could not be used)",
        f"- Steps: {config.steps} of {config.batch_size} images, 2 global crops of "
        f"{config.crops.global_size} px and {config.crops.local_crops} local crops of "
        f"{config.crops.local_size} px",
        f"- Trained: {trained}; the teacher (an EMA of the student) is what is saved",
        f"- Losses: {', '.join(losses)}; teacher targets by "
        + ("Sinkhorn-Knopp" if config.centring == "sinkhorn" else "DINO v1 centring"),
        f"- Loss: {summary['first_loss']:.4f} at the first step, {summary['last_loss']:.4f} "
        "at the last (mean of the last tenth of the steps)",
        f"- Learning rate {config.lr} (warm-up, cosine), layer decay {config.layer_decay}, "
        f"teacher momentum {config.momentum} -> 1, seed {config.seed}",
        "",
        "## Before and after",
        "",
        comparison,
        "",
        f"Every step's measures are in `{LOG}`; the whole summary is in `{SUMMARY}`.",
        "",
    ]
    return "\n".join(lines)
