"""The losses of DINOv2's self-distillation (``dinov2/loss/``), written for one device.

- ``sinkhorn_knopp``: the teacher's targets with equal use of the prototypes over the batch
  (DINOv2's default centering); ``CentredSoftmax``: DINO v1's EMA centre instead.
- ``dino_loss``: cross-entropy between the teacher's targets and the student's log-softmax,
  averaged over every pair of a teacher view and a different student view.
- ``koleo_loss``: the Kozachenko-Leonenko entropy estimate that spreads the student's
  features in a batch (pushes each one away from its nearest neighbour).
- ``ibot_loss``: the same cross-entropy on masked patch tokens (iBOT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention

STUDENT_TEMPERATURE = 0.1
SINKHORN_ITERATIONS = 3
CENTRE_MOMENTUM = 0.9


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temperature: float, iterations: int = SINKHORN_ITERATIONS
) -> torch.Tensor:
    """Teacher targets (rows sum to 1) whose prototypes are used equally over the batch."""
    q = torch.exp((logits.float() - logits.float().max()) / temperature).t()  # (K, B)
    prototypes, batch = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= batch
    q *= batch
    return q.t()


class CentredSoftmax:
    """DINO v1's teacher targets: softmax((logits - centre) / temperature), with the centre an
    EMA of the teacher's batch means."""

    def __init__(self, prototypes: int, device: torch.device) -> None:
        self.centre = torch.zeros(1, prototypes, device=device)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        targets = F.softmax((logits.float() - self.centre) / temperature, dim=-1)
        batch_mean = logits.float().mean(dim=0, keepdim=True)
        self.centre.mul_(CENTRE_MOMENTUM).add_(batch_mean, alpha=1 - CENTRE_MOMENTUM)
        return targets


def dino_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor,
    teacher_targets: torch.Tensor,
    global_views: int = 2,
) -> torch.Tensor:
    """Mean cross-entropy over the pairs (teacher global view i, student view j != i).

    Rows are view-major: view 0 of every image, then view 1, and so on.
    """
    targets = teacher_targets.chunk(global_views)
    student_views = list(student_global.float().chunk(global_views))
    if student_local.numel():
        student_views += list(
            student_local.float().chunk(student_local.shape[0] // len(targets[0]))
        )
    total = student_global.new_zeros((), dtype=torch.float32)
    pairs = 0
    for j, student in enumerate(student_views):
        log_probs = F.log_softmax(student / STUDENT_TEMPERATURE, dim=-1)
        for i, target in enumerate(targets):
            if i == j:  # a global view is not matched with itself
                continue
            total = total - (target * log_probs).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean log distance of each (normalised) feature to its nearest neighbour."""
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()


def ibot_loss(
    student_patches: torch.Tensor, teacher_targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy on masked patches, each weighted by 1 / masked patches of its image and
    averaged over images."""
    log_probs = F.log_softmax(student_patches.float() / STUDENT_TEMPERATURE, dim=-1)
    per_patch = -(teacher_targets * log_probs).sum(dim=-1)
    images = weights.sum().clamp(min=1.0)
    return (per_patch * weights).sum() / images


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row."""
    p = probabilities.float().clamp(min=1e-12)
    return -(p * p.log()).sum(dim=-1)
