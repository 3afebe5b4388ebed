"""What ``dinoseek adapt`` reports: the images it used, counted once, and the summary (JSON,
text and the model card's check table)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dinoseek.adapt.config import AdaptConfig
from dinoseek.adapt.output import LOG, SUMMARY
from dinoseek.adapt.training import Trained


@dataclass(frozen=True)
class ImageCounts:
    """The images of a run, counted once: how many image files FOLDER holds, the ones
    trained on, the labelled ones held out for the check, and the one list of images that
    could not be used (path -> reason), whenever that was found (the first check decodes
    every image; a file changed after it fails later, and joins the list then)."""

    folder: Path
    files: int
    training: tuple[Path, ...]
    held_out: frozenset[Path]
    unusable: dict[str, str] = field(default_factory=dict)

    def without(self, failed: Mapping[str, str]) -> ImageCounts:
        """The counts once ``failed`` (path -> reason) could not be used after all."""
        return replace(
            self,
            training=tuple(p for p in self.training if str(p) not in failed),
            held_out=frozenset(p for p in self.held_out if str(p) not in failed),
            unusable={**self.unusable, **failed},
        )

    @property
    def held_out_from_folder(self) -> int:
        """Held-out images that are FOLDER's (the rest of the check set lies elsewhere)."""
        return sum(1 for p in self.held_out if p.is_relative_to(self.folder))

    def text(self, *, trained: bool = True) -> str:
        """``31 image files in FOLDER: 28 trained on, 3 could not be used`` (``to train on``
        before training)."""
        inside = sum(1 for p in self.unusable if Path(p).is_relative_to(self.folder))
        parts = [f"{len(self.training):,} {'trained on' if trained else 'to train on'}"]
        if self.held_out_from_folder:
            parts.append(f"{self.held_out_from_folder:,} held out for the check")
        if inside:
            parts.append(f"{inside:,} could not be used")
        text = f"{self.files:,} image files in {self.folder}: {', '.join(parts)}"
        if len(self.unusable) > inside:
            text += f"; {len(self.unusable) - inside:,} labelled images elsewhere could not be used"
        return text


def summary_document(
    out: Path, config: AdaptConfig, counts: ImageCounts, trained: Trained, check: dict[str, Any]
) -> dict[str, Any]:
    """The run's summary (``adapt-summary.json``, and what ``--json`` prints)."""
    history = trained.history
    tail = history[-max(1, len(history) // 10) :]
    return {
        "folder": str(counts.folder),
        "out": str(out),
        "model": config.model,
        "files": counts.files,
        "images": len(counts.training),
        "held_out_from_folder": counts.held_out_from_folder,
        "unusable_images": len(counts.unusable),
        "unusable": counts.unusable,
        "images_text": counts.text(),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "resumed_from": trained.resumed_from,
        "seconds": round(trained.seconds, 2),
        "images_per_second": round(trained.images / trained.seconds, 2) if trained.seconds else 0,
        "data_wait_share": round(trained.data_wait_share, 4),
        "peak_memory_bytes": trained.peak_memory_bytes,
        "first_loss": history[0].loss,
        "last_loss": float(np.mean([m.loss for m in tail])),
        "teacher_entropy": history[-1].teacher_entropy,
        "feature_spread": history[-1].feature_spread,
        "config": config.to_dict(),
        "check": check,
    }


def check_text(check: dict[str, Any]) -> str:
    """The before/after check in words, and its table."""
    if check["kind"] == "unlabelled":
        return (
            f"No labelled check was possible (no --eval-labels). k-NN agreement between the "
            f"base and the adapted model on {check['images']} training images: "
            f"{check['knn_agreement']:.3f} (share of each image's 10 nearest neighbours kept)."
        )
    base, adapted, k = check["base"], check["adapted"], check["knn_k"]
    lines = [
        f"On {check['images']} labelled images ({check['classes']} classes) kept out of "
        f"training ({check['taken_from_folder']} of them taken out of the folder; listed in "
        f"{SUMMARY}):",
        "",
        f"| model | kNN accuracy (k={k}) | recall@1 |",
        "|---|---|---|",
        f"| base | {base['knn_accuracy']:.3f} | {base['recall@1']:.3f} |",
        f"| adapted | {adapted['knn_accuracy']:.3f} | {adapted['recall@1']:.3f} |",
    ]
    if k < check["knn_k_wanted"]:
        smallest = check["smallest_class"]
        lines += [
            "",
            f"(k = {k}, not {check['knn_k_wanted']}: the smallest class has {smallest} images "
            f"here, so a point of it has {smallest - 1} others of its class to find)",
        ]
    return "\n".join(lines)


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as the command prints it."""
    return "\n".join([
        f"adapted {summary['model']}: {summary['steps']} steps of {summary['batch_size']} "
        f"images in {summary['seconds']:.1f} s ({summary['images_per_second']:.1f} img/s, "
        f"waiting for data {100 * summary['data_wait_share']:.0f}% of the time)",
        summary["images_text"]
        + (f" (listed in {SUMMARY})" if summary["unusable_images"] else ""),
        f"loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}; teacher entropy "
        f"{summary['teacher_entropy']:.2f}; feature spread {summary['feature_spread']:.3f}",
        f"saved to {summary['out']} (--model {summary['out']}); steps logged in "
        f"{summary['out']}/{LOG}",
        "",
        check_text(summary["check"]),
    ])  # fmt: skip
