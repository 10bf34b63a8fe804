"""The text tower on token ids cut after the end token gives open_clip's embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.encoders import load_encoder
from retrieval.encoders.text_tower import causal_text_tower, encode_up_to_end
from retrieval.encoders.tokenizer import load_tokenizer, up_to_last_end
from retrieval.encoders.torch_encoder import architecture, create_untrained

TEXTS = ["a dog", "a red car parked by the sea at night, its lights on", "", "word " * 90, "🐈 ü"]


def tiny(tmp_path, **changes):
    config = architecture("tiny")
    config = {**config, **changes.pop("top", {})}
    config["text_cfg"] = {**config["text_cfg"], **changes}
    identity = create_untrained(config, tmp_path / "model")
    return load_encoder(identity, device="cpu", backend="torch")


@pytest.mark.parametrize("custom_text", [False, True], ids=["CLIP", "CustomTextCLIP"])
def test_cut_ids_give_open_clips_embeddings_of_the_whole_context(tmp_path, custom_text):
    encoder = tiny(tmp_path, top={"custom_text": custom_text})
    text = causal_text_tower(encoder.model)
    assert text is not None
    whole = torch.from_numpy(load_tokenizer(77)(TEXTS).astype(np.int64))
    with torch.no_grad():
        reference = encoder.model.encode_text(whole)  # open_clip, padded to the context
        for i, row in enumerate(whole):
            end = int(torch.nonzero(row).max())  # the last token that is not padding
            for width in (end + 1, end + 3, 77):
                got = encode_up_to_end(text, row[None, : min(width, 77)])
                assert torch.allclose(got[0], reference[i], atol=1e-5), (TEXTS[i], width)
        together = encode_up_to_end(text, up_to_last_end(whole))
    assert torch.allclose(together, reference, atol=1e-5)
    ours = encoder.encode_texts(TEXTS)
    expected = reference / reference.norm(dim=1, keepdim=True)
    assert np.allclose(ours, expected.numpy(), atol=1e-5)


def test_up_to_last_end_cuts_tensors_as_it_cuts_arrays():
    whole = torch.from_numpy(load_tokenizer(77)(TEXTS[:3]).astype(np.int64))
    last = max(int(torch.nonzero(row).max()) for row in whole)
    assert torch.equal(up_to_last_end(whole), whole[:, : last + 1])
    assert up_to_last_end(whole[:0]).shape == (0, 77)


def test_a_tower_that_attends_both_ways_encodes_the_whole_context(tmp_path):
    encoder = tiny(tmp_path, top={"custom_text": True}, no_causal_mask=True)
    assert causal_text_tower(encoder.model) is None
    whole = torch.from_numpy(load_tokenizer(77)(TEXTS).astype(np.int64))
    with torch.no_grad():
        reference = encoder.model.encode_text(whole)
    expected = (reference / reference.norm(dim=1, keepdim=True)).numpy()
    assert np.allclose(encoder.encode_texts(TEXTS), expected, atol=1e-6)
