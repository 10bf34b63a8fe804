"""bf16 on a CPU: the weights become bf16 (autocast there is slower than fp32)."""

from __future__ import annotations

import numpy as np
import torch

from retrieval.encoders import load_encoder


def test_cpu_bf16_casts_the_weights_and_stays_close_to_fp32(tiny_model, encoder):
    bf16 = load_encoder(tiny_model, device="cpu", backend="torch", precision="bf16")
    assert bf16.precision == "bf16"
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    # The cache key of ONNX exports is the weights as given, not their bf16 copy.
    assert bf16.weights_hash == encoder.weights_hash
    height, width = encoder.image_size
    pixels = np.random.default_rng(0).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    texts = ["a red square", "a photo of a dog", "ünïcödé 🐈", ""]
    for ours, reference in [
        (bf16.encode_images(pixels), encoder.encode_images(pixels)),
        (bf16.encode_texts(texts), encoder.encode_texts(texts)),
    ]:
        assert ours.dtype == np.float32
        assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
        assert (ours * reference).sum(axis=1).min() > 0.995
