"""The optimisation recipe of open_clip: AdamW with its weight-decay groups, a cosine schedule
with linear warm-up, and CLIP's (or SigLIP's) contrastive loss."""

from __future__ import annotations

import math
from typing import Any

from .config import TrainConfig


def adamw(torch: Any, model: Any, config: TrainConfig) -> Any:
    """AdamW over the trainable parameters; no weight decay on gains, biases, norms, embeddings
    and the temperature (open_clip's groups)."""

    def exempt(name: str, parameter: Any) -> bool:
        return parameter.ndim < 2 or any(
            key in name for key in ("bn", "ln", "bias", "logit_scale", "embedding", "token")
        )

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": config.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6, foreach=False)


def learning_rate(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero at the last step (open_clip's cosine_lr)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base


def contrastive_loss(name: str) -> Any:
    """open_clip's loss module for "clip" (symmetric InfoNCE) or "siglip" (sigmoid)."""
    from open_clip.loss import ClipLoss, SigLipLoss

    return SigLipLoss() if name == "siglip" else ClipLoss()
