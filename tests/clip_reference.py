"""References of the official dense-CLIP last blocks, written from the papers' equations
(never from the project's code), and a tiny random CLIP whose LayerNorms and biases are
random too, for the tests (imported as ``clip_reference``)."""

import math

import torch
import torch.nn.functional as F

from learning_to_look.maps.weights import CLIP_MEAN, CLIP_STD, Pretrained
from tiny_models import tiny_clip

#: Native grid 6x6 (48 px, patch 8).
SIZE, PATCH = 48, 8


def randomised_clip(layers: int = 2, seed: int = 0) -> Pretrained:
    """A tiny CLIP whose every LayerNorm and bias is random too, so a missing one shows."""
    model, tok = tiny_clip(image_size=SIZE, patch_size=PATCH, layers=layers, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return Pretrained(model, tok, f"memory:random-init test model:{seed}", CLIP_MEAN, CLIP_STD)


def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def linear(x, lin):
    return x @ lin.weight.T + (lin.bias if lin.bias is not None else 0)


def ffn(x, layer):
    """CLIP's MLP: fc2(quick_gelu(fc1(x)))."""
    h = linear(x, layer.mlp.fc1)
    return linear(h * torch.sigmoid(1.702 * h), layer.mlp.fc2)


def heads(x, n):
    """(B, T, n*d) -> (B, T, n, d)."""
    return x.reshape(*x.shape[:2], n, -1)


def gaussian_bias(grid, sigma):
    """(1+P, 1+P): exp(-|p_i - p_j|^2 / 2 sigma^2) between patches, 0 for the class token."""
    pos = [(i, j) for i in range(grid[0]) for j in range(grid[1])]
    g = torch.zeros(len(pos) + 1, len(pos) + 1)
    for a, (i, j) in enumerate(pos):
        for b, (k, m) in enumerate(pos):
            g[a + 1, b + 1] = math.exp(-((i - k) ** 2 + (j - m) ** 2) / (2 * sigma ** 2))
    return g


def reference_last_block(layer, x, variant, grid, sigma, with_cls=True):
    """The official last block of ``variant`` on (B, 1+P, D) tokens: sums over heads written out.
    ``with_cls`` False runs it on the patches alone (the project's former rule)."""
    x = x if with_cls else x[:, 1:]
    attn = layer.self_attn
    n = attn.num_heads
    h = layer_norm(x, layer.layer_norm1)
    q, k, v = (heads(linear(h, p), n) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    s = q.shape[-1] ** -0.5
    sim = {"qk": (q, k), "qq": (q, q), "kk": (k, k)}
    logits = {key: torch.einsum("btnd,bsnd->bnts", a, b) * s for key, (a, b) in sim.items()}
    if variant == "vanilla":
        mix = logits["qk"].softmax(-1)
    elif variant in ("sclip", "sclip-nores"):  # SCLIP: correlative self-attention
        mix = logits["qq"].softmax(-1) + logits["kk"].softmax(-1)
    elif variant == "clearclip":  # ClearCLIP: self-self (query-query) attention
        mix = logits["qq"].softmax(-1)
    elif variant == "naclip":  # NACLIP: key-key similarity plus a Gaussian neighbourhood
        mix = (logits["kk"] + gaussian_bias(grid, sigma)[int(not with_cls):, int(not with_cls):]).softmax(-1)
    else:  # MaskCLIP: the value embedding of each token, no mixing
        mix = torch.eye(x.shape[1]).expand(x.shape[0], n, -1, -1)
    out = linear(torch.einsum("bnts,bsnd->btnd", mix, v).reshape(x.shape), attn.out_proj)
    if variant in ("vanilla", "maskclip", "sclip"):  # these keep the residual and the FFN
        out = x + out
        out = out + ffn(layer_norm(out, layer.layer_norm2), layer)
    return out


def reference_patch_embeddings(clip, pixels, variant, sigma):
    """(B, h, w, E) unit patch embeddings: the last block's input from Hugging Face's own
    forward, the official last block, post-layernorm and projection, class token dropped."""
    model = clip.model
    with torch.no_grad():
        x = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        grid = (pixels.shape[-2] // PATCH, pixels.shape[-1] // PATCH)
        out = reference_last_block(model.vision_model.encoder.layers[-1], x, variant, grid, sigma)
        emb = layer_norm(out, model.vision_model.post_layernorm) @ model.visual_projection.weight.T
    return F.normalize(emb[:, 1:], dim=-1).reshape(len(pixels), *grid, -1)


def reference_text(clip, prompts, templates):
    """(K, E): each prompt's unit embeddings over the templates averaged and renormalised."""
    rows = []
    with torch.no_grad():
        for p in prompts:
            tok = clip.tokenizer([t.format(p) for t in templates], padding=True, return_tensors="pt")
            out = clip.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            emb = F.normalize(getattr(out, "pooler_output", out), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)
