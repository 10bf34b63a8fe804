"""What names a model: its open_clip identifier, pretrained tag, and the hash of its weights.

Nothing here imports torch; open_clip is imported only to list the tags of a model named
without one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from index.manifest import ModelIdentity

from .errors import ModelLoadError

DEFAULT_MODEL = ModelIdentity("ViT-B-32", "laion2b_s34b_b79k")
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


RANDOM_WEIGHTS = "none"
"""The --pretrained value that asks for randomly initialised weights (speed tests)."""


def model_identity(name: str, pretrained: str | None = None) -> ModelIdentity:
    """Normalise a user's model choice.

    local-dir: folders become absolute; hf-hub: and local-dir: models carry their own weights, so
    they take no tag. A built-in architecture needs a pretrained tag (the default model's is
    implied); `none` asks for random weights.
    """
    if name.startswith(LOCAL_DIR):
        path = Path(name[len(LOCAL_DIR) :]).expanduser()
        return ModelIdentity(LOCAL_DIR + str(path.resolve()), None)
    if name.startswith(HF_HUB):
        return ModelIdentity(name, None)
    if pretrained is None:
        if name == DEFAULT_MODEL.name:
            return DEFAULT_MODEL
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelLoadError(
            f"model {name} needs --pretrained TAG"
            + (f" (one of: {', '.join(tags)})" if tags else "")
            + "; or use --model local-dir:/path/to/folder"
        )
    return ModelIdentity(name, None if pretrained == RANDOM_WEIGHTS else pretrained)


def weights_hash(model: Any) -> str:
    """SHA-256 of a torch model's weights, in parameter-name order: the model's identity in
    caches, independent of the file format it was loaded from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
