"""The student and the teacher: a DINOv2 backbone and a DINO projection head each.

Both start from the pretrained checkpoint (the head, which the released checkpoints do not
include, from one random draw). The teacher is never trained: ``update_teacher`` sets it to an
EMA of the student. What the student trains is chosen by ``Trainable``: the last blocks, LoRA
adapters (peft), or everything.
"""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from torch import nn

from dinoseek.errors import ConfigError

TrainMode = Literal["blocks", "lora", "all"]
DEFAULT_TRAINED_BLOCKS = 4
PATCH_EMBED_LR_SCALE = 0.2  # DINOv2's patch_embed_lr_mult
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


@dataclass(frozen=True)
class HeadSpec:
    """The DINO head: an MLP to a bottleneck, then cosine logits against the prototypes."""

    prototypes: int = 8192
    hidden: int = 2048
    bottleneck: int = 256


@dataclass(frozen=True)
class Trainable:
    """What the student trains: the last ``blocks`` blocks (and the final norm; None: 4, or
    every block of a smaller model), LoRA adapters of ``lora_rank`` on the attention
    projections, or all of the backbone."""

    mode: TrainMode = "blocks"
    blocks: int | None = None
    lora_rank: int = 8


class DinoHead(nn.Module):
    """DINOv2's ``DINOHead``: 3-layer MLP (GELU), L2-normalised bottleneck, and a weight-
    normalised last layer (its rows, the prototypes, have unit norm)."""

    def __init__(self, in_dim: int, spec: HeadSpec) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, spec.hidden),
            nn.GELU(),
            nn.Linear(spec.hidden, spec.hidden),
            nn.GELU(),
            nn.Linear(spec.hidden, spec.bottleneck),
        )
        self.prototypes = nn.Parameter(torch.empty(spec.prototypes, spec.bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                # The recipe's 0.02 for wide layers; narrow ones (small models) get
                # 1/sqrt(fan-in) so that the output is not smaller than one Adam step.
                std = max(0.02, layer.in_features**-0.5)
                nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()


class Network(nn.Module):
    """A backbone and its head; ``forward`` gives the normed tokens (CLS first)."""

    def __init__(self, backbone: nn.Module, head: DinoHead, num_register_tokens: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.config: Any = backbone.config
        self.head = head
        self.num_register_tokens = num_register_tokens

    def forward(
        self, pixels: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS (B, dim), patch tokens (B, patches, dim)) after the final norm."""
        hidden = self.backbone(pixel_values=pixels, bool_masked_pos=masks).last_hidden_state
        return hidden[:, 0], hidden[:, 1 + self.num_register_tokens :]


def build_networks(
    backbone: nn.Module,
    head_spec: HeadSpec,
    trainable: Trainable,
    *,
    seed: int,
    gradient_checkpointing: bool = False,
) -> tuple[Network, Network]:
    """(student, teacher), both from ``backbone`` and one random head."""
    config: Any = backbone.config
    dim = int(config.hidden_size)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = DinoHead(dim, head_spec)
    torch.random.set_rng_state(generator_state)
    backbone.requires_grad_(False)
    if trainable.mode == "lora":
        backbone = _with_lora(backbone, trainable.lora_rank)
    else:
        _unfreeze(backbone, trainable, int(config.num_hidden_layers))
    registers = int(getattr(config, "num_register_tokens", 0) or 0)
    student = Network(backbone, head, registers)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    if gradient_checkpointing:
        _checkpoint_activations(student.backbone)
    return student, teacher


def _checkpoint_activations(backbone: nn.Module) -> None:
    """transformers' activation checkpointing (renamed from gradient checkpointing in v5)."""
    model: Any = backbone
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()


def _unfreeze(backbone: nn.Module, trainable: Trainable, layers: int) -> None:
    if trainable.mode == "all":
        backbone.requires_grad_(True)
        return
    blocks = min(DEFAULT_TRAINED_BLOCKS, layers) if trainable.blocks is None else trainable.blocks
    if not 1 <= blocks <= layers:
        raise ConfigError(f"--train-blocks must be between 1 and {layers} (the model's blocks)")
    model: Any = backbone
    for block in model.encoder.layer[layers - blocks :]:
        block.requires_grad_(True)
    model.layernorm.requires_grad_(True)


def _with_lora(backbone: nn.Module, rank: int) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--train lora needs peft: pip install 'dinoseek[adapt]'") from None
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    targets = [n for n in ("q_proj", "v_proj", "query", "value") if n in names]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(backbone, config)


def merged_backbone(network: Network) -> nn.Module:
    """The plain DINOv2 backbone of ``network`` (LoRA adapters merged into the weights)."""
    backbone = network.backbone
    if hasattr(backbone, "merge_and_unload"):
        merged: nn.Module = copy.deepcopy(backbone).merge_and_unload()  # type: ignore[operator]
        return merged
    return backbone


def layer_id(name: str, layers: int) -> int:
    """0 for the embeddings, i + 1 for block i, layers + 1 for the final norm and the head."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    if "embeddings" in name:
        return 0
    return layers + 1


def parameter_groups(student: Network, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: a learning-rate scale that decays by
    ``layer_decay`` per block below the top (0.2 more for the patch embedding), and no weight
    decay on biases, norms and tokens (1-d parameters), as in DINOv2, nor on the prototypes
    (they are normalised before use, so decay would only shrink them towards zero)."""
    layers = int(student.config.num_hidden_layers)
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in student.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = layer_decay ** (layers + 1 - layer_id(name, layers))
        if "patch_embeddings" in name:
            scale *= PATCH_EMBED_LR_SCALE
        decays = parameter.ndim > 1 and "token" not in name and name != "head.prototypes"
        groups.setdefault((scale, decays), []).append(parameter)
    return [
        {"params": params, "lr_scale": scale, "decays": decays}
        for (scale, decays), params in sorted(groups.items(), key=lambda item: item[0])
    ]


@torch.no_grad()
def update_teacher(student: Network, teacher: Network, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for the trained parameters
    (the others are equal in both)."""
    pairs = [
        (t, s)
        for (_, s), (_, t) in zip(
            student.named_parameters(), teacher.named_parameters(), strict=True
        )
        if s.requires_grad
    ]
    if not pairs:
        return
    teacher_params: list[torch.Tensor] = [t for t, _ in pairs]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [s.detach() for _, s in pairs], alpha=1 - momentum)
