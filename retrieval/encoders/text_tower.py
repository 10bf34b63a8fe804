"""open_clip's text tower run on token ids cut after the last end token.

CLIP's text tower, and open_clip's TextTransformer without a class token, is causal (no position
attends to a later one) and pooled at the end token, which has the highest id. The columns after
the last end token of a batch are then padding that no pooled position sees: a tower run on the
ids cut there, with the first positions' embeddings and the first rows and columns of its mask,
gives the same embeddings for a fraction of the work (a query of a few words is about a tenth of
CLIP's 77-token context). Its callers hold a torch model; the cut itself is
tokenizer.up_to_last_end.
"""

from __future__ import annotations

from typing import Any

PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def causal_text_tower(model: Any) -> Any | None:
    """The module that holds the model's text tower (the model itself for CLIP, `.text` for
    CustomTextCLIP) if it is causal, pooled at the end token and without a class token; else
    None (encode the whole context)."""
    text = getattr(model, "text", model)
    pool = getattr(text, "pool_type", getattr(text, "text_pool_type", None))
    if (
        pool != "argmax"
        or getattr(text, "attn_mask", None) is None
        or getattr(text, "cls_emb", None) is not None
        or not all(hasattr(text, part) for part in PARTS)
    ):
        return None
    return text


def encode_up_to_end(text: Any, ids: Any) -> Any:
    """The text tower (from causal_text_tower) on token ids of any length up to its context:
    the embeddings open_clip's encode_text gives for the same ids padded to the context."""
    import torch

    length = ids.shape[1]
    dtype = text.transformer.get_cast_dtype()
    x = text.token_embedding(ids).to(dtype) + text.positional_embedding[:length].to(dtype)
    x = text.transformer(x, attn_mask=text.attn_mask[:length, :length])
    x = text.ln_final(x)[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
    projection = text.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
