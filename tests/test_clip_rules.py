"""Each dense-CLIP variant against a reference written from its paper's equations
(``clip_reference``, never the project's code), on a tiny random CLIP whose LayerNorms and
biases are randomised too; position embeddings against a bicubic resize computed by hand; sliding windows and the
order of upsampling and softmax against the official pipelines' description."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learning_to_look.maps import ClipMaps, PromptSpec, as_split
from learning_to_look.maps.clip import DenseCLIP
from learning_to_look.maps.geometry import window_starts
from learning_to_look.maps.clip_rules import RULES, VARIANTS, interpolate_positions
from learning_to_look.maps.refine import pamr
from learning_to_look.maps.weights import CLIP_MEAN, CLIP_STD
from clip_reference import (SIZE, layer_norm, randomised_clip, reference_last_block, reference_patch_embeddings,
                            reference_text)
from tiny_models import tiny_clip

#: A Gaussian of sigma 1.5 patches, so NACLIP's window matters on the 6x6 grid.
SIGMA = 1.5
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_map_thread")


@pytest.fixture(scope="module")
def clip():
    return randomised_clip()


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def project_patch_embeddings(clip, pixels, variant, sigma=SIGMA):
    return DenseCLIP(clip, torch.device("cpu")).encode(pixels, variant, guard_z=0, sigma=sigma).patch_emb


# ---- each variant's last block ----------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_equals_its_official_last_block(variant, clip, pixels):
    got = project_patch_embeddings(clip, pixels, variant)
    want = reference_patch_embeddings(clip, pixels, variant, SIGMA)
    assert got.shape == want.shape == (2, 6, 6, 32)
    assert (got - want).abs().max().item() < TOL


def test_the_variants_differ_from_one_another(clip, pixels):
    """A reference test that passed for every variant with the same output would prove nothing."""
    embs = {v: project_patch_embeddings(clip, pixels, v) for v in VARIANTS}
    for a in VARIANTS:
        for b in VARIANTS:
            if a < b:
                assert (embs[a] - embs[b]).abs().max() > 1e-3, (a, b)


@pytest.mark.parametrize("variant", ["clearclip", "naclip"])
def test_the_class_token_takes_part_in_the_last_block(variant, clip, pixels):
    """Leaving the class token out of the attention (the former rule) gives other patches."""
    model = clip.model
    with torch.no_grad():
        x = model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        layer = model.vision_model.encoder.layers[-1]
        without = reference_last_block(layer, x, variant, (6, 6), SIGMA, with_cls=False)
        emb = layer_norm(without, model.vision_model.post_layernorm) @ model.visual_projection.weight.T
    without = F.normalize(emb, dim=-1).reshape(2, 6, 6, -1)
    got = project_patch_embeddings(clip, pixels, variant)
    assert (got - without).abs().max().item() > 100 * TOL


def test_each_variant_has_its_official_settings():
    assert {v: RULES[v].temperature for v in VARIANTS} == {
        "vanilla": 40.0, "maskclip": 100.0, "sclip": 40.0, "clearclip": 50.0, "naclip": 40.0,
        "maskclip-nores": 50.0, "sclip-nores": 50.0}
    assert len(RULES["naclip"].templates) == 80 and len(RULES["maskclip"].templates) == 85
    assert (RULES["sclip"].window, RULES["sclip"].stride, RULES["clearclip"].window) == (224, 112, 448)
    gen = ClipMaps(vlm=tiny_clip(), variant="clearclip", prompts={"templates": ["a photo of {}."]})
    assert gen.prompts.temperature == 50.0 and gen.prompts.templates == ("a photo of {}.",)
    assert ClipMaps(vlm=tiny_clip(), variant="maskclip").prompts.temperature == 100.0
    assert ClipMaps(vlm=tiny_clip(), variant="sclip", prompts=PromptSpec(temperature=7.0)).prompts.temperature == 7.0


# ---- position embeddings ----------------------------------------------------------------

def cubic_weights(t, a=-0.75):
    """Keys' cubic convolution weights of the 4 source pixels around fractional offset t."""
    def w(x):
        x = abs(x)
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1 if x <= 1 else a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return [w(t + 1), w(t), w(1 - t), w(2 - t)]


def resize_matrix(n_out, n_in, ratio):
    """(n_out, n_in) bicubic resize with source coordinate (i + 0.5) * ratio - 0.5, borders clamped."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * ratio - 0.5
        x0 = math.floor(src)
        for off, wt in zip(range(-1, 3), cubic_weights(src - x0)):
            m[i, min(max(x0 + off, 0), n_in - 1)] += wt
    return m


@pytest.mark.parametrize("n,mode", [(9, "scaled"), (9, "size"), (4, "scaled"), (21, "scaled")])
def test_position_embeddings_resize_as_the_official_codes(n, mode, clip):
    pos = clip.model.vision_model.embeddings.position_embedding.weight.detach()  # (1 + 36, D)
    n0 = 6
    ratio = n0 / (n + 0.1) if mode == "scaled" else n0 / n  # the (n + 0.1) trick of SCLIP, ClearCLIP and NACLIP
    m = resize_matrix(n, n0, ratio)
    grid = pos[1:].double().reshape(n0, n0, -1)
    want = torch.einsum("ia,jb,abd->ijd", m, m, grid).reshape(n * n, -1)
    got = interpolate_positions(pos, (n, n), mode)
    assert got.shape == (1 + n * n, pos.shape[1]) and torch.equal(got[0], pos[0])
    assert (got[1:].double() - want).abs().max().item() < TOL
    assert torch.equal(interpolate_positions(pos, (n0, n0), mode), pos)


def test_size_mode_is_hugging_face_interpolation(clip):
    pixels = torch.randn(1, 3, 72, 72)
    dense = DenseCLIP(clip, torch.device("cpu"))
    with torch.no_grad():
        ours, grid = dense.embed(pixels, "size")
        vision = clip.model.vision_model
        theirs = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))
    assert grid == (9, 9) and (ours - theirs).abs().max().item() < TOL


# ---- the pipeline: logits upsampled, windows averaged, then the softmax ----------------------

def test_window_starts_place_windows_as_the_official_codes():
    assert window_starts(80, 48, 16) == [0, 16, 32]
    assert window_starts(56, 48, 32) == [0, 8]  # the last window moved back to end at the border
    assert window_starts(448, 224, 112) == [0, 112, 224]
    assert window_starts(48, 48, 24) == [0]


def reference_logits(clip, pixels, variant, text):
    """(B, K, S, S): patch cosines bilinearly upsampled to the pass's pixels."""
    emb = reference_patch_embeddings(clip, pixels, variant, sigma=5.0)
    cos = torch.einsum("bhwe,ke->bkhw", emb, text)
    return F.interpolate(cos, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("variant", ["naclip", "sclip"])
def test_sliding_windows_average_the_logits_of_every_window(variant, clip):
    pixels = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(5))
    gen = ClipMaps(vlm=clip, variant=variant, input_size=80, window=48, stride=16, guard_z=0)
    text = reference_text(clip, gen.prompts.positive + gen.prompts.negative, gen.prompts.templates)
    total, count = torch.zeros(2, len(text), 80, 80), torch.zeros(80, 80)
    for y in (0, 16, 32):
        for x in (0, 16, 32):
            total[..., y:y + 48, x:x + 48] += reference_logits(clip, pixels[..., y:y + 48, x:x + 48], variant, text)
            count[y:y + 48, x:x + 48] += 1
    got, masks = gen.pixel_logits(pixels)
    assert len(masks) == 9 and (got - total / count).abs().max().item() < TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_maps_upsample_logits_before_the_softmax(variant, clip):
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 28, 28), dtype=np.uint8)
    # A fixed prompt: on random weights how far the two orders part depends on the text.
    gen = ClipMaps(vlm=clip, variant=variant, input_size=SIZE, guard_z=0, prompts={"positive": ["a handwritten digit"]})
    maps = gen.generate(as_split(images))
    spec = gen.prompts
    text = reference_text(clip, spec.positive + spec.negative, spec.templates)
    pixels = (torch.as_tensor(images).float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = F.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    logits = F.interpolate(reference_logits(clip, pixels, variant, text), size=(28, 28), mode="area")
    want = (spec.temperature * logits).softmax(1)[:, :len(spec.positive)].sum(1)
    assert np.abs(maps - want.numpy()).max() < TOL
    softmax_first = F.interpolate(((spec.temperature * reference_logits(clip, pixels, variant, text)).softmax(1)
                                   [:, :len(spec.positive)].sum(1, keepdim=True)), size=(28, 28), mode="area")[:, 0]
    assert np.abs(maps - softmax_first.numpy()).max() > TOL  # the old order gives other maps


def test_pamr_refines_the_logits_before_the_softmax(clip):
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 28, 28), dtype=np.uint8)
    gen = ClipMaps(vlm=clip, variant="naclip", input_size=SIZE, refine="pamr", guard_z=0)
    plain = ClipMaps(vlm=clip, variant="naclip", input_size=SIZE, guard_z=0)
    pixels = plain._pixels(images)
    logits = F.interpolate(plain.pixel_logits(pixels)[0], size=(28, 28), mode="area")
    refined = pamr(torch.as_tensor(images).float() / 255, logits)
    want = (40.0 * refined).softmax(1)[:, :1].sum(1)
    assert np.abs(gen.generate(as_split(images)) - want.numpy()).max() < TOL
