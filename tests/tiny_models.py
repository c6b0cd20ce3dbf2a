"""Tiny randomly initialised CLIP and DINOv2 models, built offline from configs, for
the tests (imported as ``tiny_models``: pytest puts ``tests/`` on the path).

They exercise the real code path (same classes, same tokenizer type, same
``save_pretrained`` folders) on machines without weights or network. Their configs
carry ``l2l_weights = "random-init test model"``, which ends up in every map
fingerprint and result, so their maps can never be mistaken for VLM maps.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

from learning_to_look.maps.weights import RANDOM_INIT

_CHARS = string.ascii_lowercase + string.digits + ".,{}'-"


def tiny_tokenizer():
    """A character-level ``CLIPTokenizer`` (no merges): real class, offline vocab."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(_CHARS)}
    vocab.update({f"{c}</w>": len(_CHARS) + i for i, c in enumerate(_CHARS)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"))


def tiny_clip(image_size: int = 32, patch_size: int = 8, hidden: int = 32, layers: int = 2, seed: int = 0):
    """(CLIPModel, CLIPTokenizer) small enough for a unit test."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    tok = tiny_tokenizer()
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=len(tok), max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(common, image_size=image_size, patch_size=patch_size),
        projection_dim=hidden,
    )
    config.l2l_weights = RANDOM_INIT
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), tok


def save_tiny_clip(folder: str | Path, **kwargs) -> Path:
    """Write a tiny CLIP and its tokenizer as a ``--vlm PATH`` folder."""
    model, tok = tiny_clip(**kwargs)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def tiny_dino(image_size: int = 28, patch_size: int = 7, hidden: int = 24, layers: int = 2, seed: int = 0):
    """A tiny ``Dinov2Model`` for WeCLIP's optional second feature stream."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, image_size=image_size, patch_size=patch_size)
    config.l2l_weights = RANDOM_INIT
    torch.manual_seed(seed)
    return Dinov2Model(config).eval()
