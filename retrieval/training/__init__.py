"""Contrastive training of the image and text towers, from scratch or from any open_clip weights.

CLIP's symmetric InfoNCE loss with a learnable temperature (open_clip's ClipLoss; its sigmoid
loss on request), AdamW with open_clip's weight-decay groups, a cosine schedule with warm-up,
gradient clipping, optional locked towers (LiT). Images come through the indexer's decoding path.
The data order is a pure function of (seed, epoch), so a run resumed from its last checkpoint
ends exactly where an uninterrupted run would.

config.py: TrainConfig, TrainProgress, TrainReport; data.py: the split and the batches;
optim.py: optimiser, schedule and loss; trainer.py: the loop, validation and checkpoints.
"""

from .config import TrainConfig, TrainProgress, TrainReport
from .errors import TrainingError
from .trainer import train

__all__ = ["TrainConfig", "TrainProgress", "TrainReport", "TrainingError", "train"]
