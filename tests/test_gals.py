"""GALS's maps and PAMR against hand computations: the relevancy and Grad-CAM rules on a
one-layer CLIP written out here, the prompt combination, GALS's own files, and PAMR's
8-neighbour update on a 5x5 image."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learning_to_look.errors import L2LError
from learning_to_look.maps import GalsMaps, PrecomputedMaps, as_split, get_map_source
from learning_to_look.maps.gals import chefer_relevancy, combine_prompt_maps, gals_normalize, grad_cam
from learning_to_look.maps.refine import pamr, pamr_affinity
from clip_reference import SIZE, ffn, heads, layer_norm, linear, randomised_clip


pytestmark = pytest.mark.usefixtures("one_map_thread")


@pytest.fixture(scope="module")
def one_layer():
    return randomised_clip(layers=1, seed=4)


# ---- pure rules by hand ----------------------------------------------------------------

def test_gals_normalize_divides_by_the_max_as_gals_does():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(gals_normalize(x), torch.tensor([[0.0, 1 / 3, 2 / 3], [0.0, 0.0, 0.0]]))


def test_grad_cam_by_hand():
    acts = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # (1, D=2, 1, 2)
    grads = torch.tensor([[[[1.0, 3.0]], [[-2.0, 0.0]]]])  # channel means 2 and -1
    # pixel 0: 2*1 - 1*3 = -1 -> 0; pixel 1: 2*2 - 1*(-1) = 5
    assert torch.equal(grad_cam(acts, grads), torch.tensor([[[0.0, 5.0]]]))


def test_chefer_relevancy_by_hand():
    a1 = torch.tensor([[[[0.5, 0.5], [0.2, 0.8]], [[1.0, 0.0], [0.0, 1.0]]]])  # (B=1, n=2, T=2, T)
    g1 = torch.tensor([[[[2.0, -1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    # (g * a)^+ per head: [[1, 0], [.2, .8]] and [[1, 0], [0, 1]]; head mean [[1, 0], [.1, .9]]
    cam1 = torch.tensor([[1.0, 0.0], [0.1, 0.9]])
    r1 = torch.eye(2) + cam1 @ torch.eye(2)
    assert torch.allclose(chefer_relevancy([a1], [g1]), r1[None, 0, 1:])
    a2, g2 = torch.full((1, 1, 2, 2), 0.5), torch.tensor([[[[1.0, 4.0], [0.0, -2.0]]]])
    cam2 = torch.tensor([[0.5, 2.0], [0.0, 0.0]])
    r2 = r1 + cam2 @ r1  # R <- R + cam R, in forward order
    assert torch.allclose(chefer_relevancy([a1, a2], [g1, g2]), r2[None, 0, 1:])


def test_prompts_combine_as_gals_average_nonzero():
    maps = torch.zeros(2, 3, 1, 2)
    maps[0, 0] = torch.tensor([[1.0, 3.0]])
    maps[0, 2] = torch.tensor([[2.0, 1.0]])  # prompt 1 is all zero: dropped, not averaged in
    combined, empty = combine_prompt_maps(maps)
    mean = torch.tensor([[1.5, 2.0]])
    assert torch.allclose(combined[0], (mean - 1.5) / 2.0)
    assert torch.equal(combined[1], torch.zeros(1, 2)) and empty.tolist() == [False, True]


# ---- one layer of CLIP, written out ------------------------------------------------------

def one_layer_forward(clip, pixels, attention=None, normed=None):
    """The one-layer CLIP forward by hand from the embeddings (Hugging Face's own): the
    attention weights or the layer-normed tokens can be given, as leaves to differentiate by."""
    model = clip.model
    vision = model.vision_model
    x = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[0].detach()
    layer = vision.encoder.layers[0]
    attn = layer.self_attn
    h = layer_norm(x, layer.layer_norm1) if normed is None else normed
    q, k, v = (heads(linear(h, p), attn.num_heads) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    a = (torch.einsum("btnd,bsnd->bnts", q, k) * q.shape[-1] ** -0.5).softmax(-1) if attention is None else attention
    x = x + linear(torch.einsum("bnts,bsnd->btnd", a, v).reshape(x.shape), attn.out_proj)
    x = x + ffn(layer_norm(x, layer.layer_norm2), layer)
    feats = layer_norm(x[:, 0], vision.post_layernorm) @ model.visual_projection.weight.T
    return feats, a, h


def text_embedding(clip, text):
    tok = clip.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        out = clip.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)[0]


def test_relevancy_on_a_one_layer_model_by_hand(one_layer):
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    gen = GalsMaps(vlm=one_layer, input_size=SIZE, texts=("a digit", "a photo of a digit"))
    got = gen.prompt_maps(pixels)  # (B, P, 6, 6)
    for p, text in enumerate(gen.texts):
        _, a, _ = one_layer_forward(one_layer, pixels)
        a = a.detach().requires_grad_(True)
        feats, _, _ = one_layer_forward(one_layer, pixels, attention=a)
        logit = one_layer.model.logit_scale.exp() * F.normalize(feats, dim=-1) @ text_embedding(one_layer, text)
        (grad,) = torch.autograd.grad(logit.sum(), a)
        cam = (grad * a).clamp(min=0).mean(1)  # (B, T, T)
        rel = (torch.eye(37) + cam)[:, 0, 1:]  # one block: R = I + cam I
        want = (rel - rel.min(1, keepdim=True).values) / rel.max(1, keepdim=True).values
        assert (got[:, p].reshape(2, -1) - want).abs().max().item() < 1e-5


def test_grad_cam_on_a_one_layer_model_by_hand(one_layer):
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    gen = GalsMaps(vlm=one_layer, method="gradcam", input_size=SIZE, texts=("a digit",))
    got = gen.prompt_maps(pixels)[:, 0]  # (B, 6, 6)
    _, _, h = one_layer_forward(one_layer, pixels)
    h = h.detach().requires_grad_(True)
    feats, _, _ = one_layer_forward(one_layer, pixels, normed=h)
    target = (feats @ text_embedding(one_layer, "a digit")) * feats.norm(dim=-1).detach()
    (grad,) = torch.autograd.grad(target.sum(), h)
    weights = grad[:, 1:].mean(1)  # (B, D): the gradient averaged over the patches
    cam = (h[:, 1:] * weights[:, None]).sum(-1).clamp(min=0).detach()  # (B, 36)
    top = cam.max(1, keepdim=True).values
    want = (cam - cam.min(1, keepdim=True).values) / torch.where(top == 0, torch.ones_like(top), top)
    assert (got.reshape(2, -1) - want).abs().max().item() < 1e-5


def test_gals_source_makes_maps_and_counts_empty_ones(one_layer):
    images = np.zeros((4, 1, 28, 28), np.uint8)
    images[:, 0, 6:22, 12:16] = 200
    for method in ("relevancy", "gradcam"):
        gen = get_map_source("gals", vlm=one_layer, method=method, input_size=SIZE, batch_size=3)
        maps = gen.generate(as_split(images))
        assert maps.shape == (4, 28, 28) and 0 <= maps.min() and maps.max() <= 1 and maps.std() > 0
        assert gen.last_stats["images"] == 4 and gen.kind == "vlm" and gen.describe()["real_vlm"] is False
    assert gen.fingerprint() != get_map_source("gals", vlm=one_layer, input_size=SIZE).fingerprint()
    with pytest.raises(L2LError, match="unknown --method 'cam'"):
        GalsMaps(vlm=one_layer, method="cam")
    with pytest.raises(L2LError, match="--prompt must be one or more non-empty texts"):
        GalsMaps(vlm=one_layer, texts=("",))


def test_gals_files_load_as_precomputed_maps(tmp_path):
    """The .pth files of GALS's extract_attention.py (in sub-folders, with numpy ``probs``)."""
    rng = np.random.default_rng(0)
    att = {}
    for i in range(3):
        a = torch.as_tensor(rng.random((2, 1, 7, 7)), dtype=torch.float32)
        a[1] = 0 if i == 1 else a[1]
        att[i] = a
        (tmp_path / "cls").mkdir(exist_ok=True)
        torch.save({"unnormalized_attentions": a, "attentions": a, "text_list": ["an image of a x", "a photo of a x"],
                    "probs": np.array([[0.3, 0.7]], np.float32)}, tmp_path / "cls" / f"img_{i}.pth")
    gen = PrecomputedMaps(path=str(tmp_path))
    maps = gen.generate(as_split(np.zeros((3, 1, 28, 28), np.uint8)))
    for i, a in att.items():
        up = F.interpolate(a.transpose(0, 1), size=(28, 28), mode="bilinear", align_corners=False)[0]
        keep = up[[0]] if i == 1 else up  # the all-zero map of image 1 is dropped
        mean = keep.mean(0)
        assert np.abs(maps[i] - ((mean - mean.min()) / mean.max()).numpy()).max() < 1e-6
    assert gen.kind == "external" and gen.config()["source"] == "gals"
    torch.save({"something": 1}, tmp_path / "cls" / "img_2.pth")
    with pytest.raises(L2LError, match="holds no GALS attention"):
        PrecomputedMaps(path=str(tmp_path)).generate(as_split(np.zeros((3, 1, 28, 28), np.uint8)))


# ---- PAMR --------------------------------------------------------------------------------

def test_pamr_on_a_5x5_image_by_hand():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 1, 2] = 1.0  # one bright pixel above the centre
    ramp = torch.arange(25, dtype=torch.float32).view(1, 5, 5)  # m[i, j] = 5 i + j
    out = pamr(image, ramp, iterations=1, dilations=(1,))
    # centre: its 3x3 window holds one 1 among 9, unbiased std sqrt((1 - 9 / 81) / 8) = 1/3; the
    # neighbour above differs by 1 (logit -1 / (0.1 / 3) = -30), the other 7 not at all (logit 0)
    e = math.exp(-30)
    others = 6 + 8 + 11 + 13 + 16 + 17 + 18  # the 8 neighbours but the one above (7); not the centre (12)
    assert out[0, 2, 2].item() == pytest.approx((others + 7 * e) / (7 + e), rel=1e-6)
    # corner (0, 0): a flat window (std 0), so the 8 edge-replicated neighbours weigh 1/8 each
    assert out[0, 0, 0].item() == pytest.approx((0 + 0 + 1 + 0 + 1 + 5 + 5 + 6) / 8, rel=1e-6)
    aff = pamr_affinity(torch.rand(2, 3, 5, 5), dilations=(1, 2))
    assert aff.shape == (2, 16, 5, 5) and torch.allclose(aff.sum(1), torch.ones(2, 5, 5))
