"""Map stage: tensor math against hand computations, backends on tiny random CLIP
models, the cache's resume and corruption handling, precomputed maps, diagnostics."""

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from learning_to_look.data import DIGIT_THRESHOLD, Split
from learning_to_look.errors import L2LError
from learning_to_look.maps import (ClipMaps, ImageSet, MapGenerator, PrecomputedMaps, PromptSpec, WeCLIPMaps, as_split,
                                   cached_maps, folder_maps, get_map_source, load_clip, load_map_set, map_quality,
                                   map_report)
from learning_to_look.maps.cache import cache_folder
from learning_to_look.maps.clip import artefact_mask, foreground_probability, neighbour_median
from learning_to_look.maps.geometry import to_image_size
from learning_to_look.maps.clip_rules import VARIANTS, attention_weights, gaussian_window, self_similarity
from learning_to_look.maps.diagnostics import auroc, mass_share, pointing_game
from learning_to_look.maps.refine import pamr
from learning_to_look.maps.weclip import affinity_refine, pseudo_labels
from tiny_models import save_tiny_clip, tiny_clip, tiny_dino


pytestmark = pytest.mark.usefixtures("one_map_thread")


@pytest.fixture(scope="module")
def clip_pair():
    return tiny_clip()


@pytest.fixture(scope="module")
def digits():
    """Six 28x28 grey 'digits' (a bright bar) on black, as a Split-like object."""
    images = np.zeros((6, 1, 28, 28), np.uint8)
    images[:, 0, 6:22, 12:16] = 200
    return as_split(images)


# ---- tensor math ----------------------------------------------------------------------

def test_foreground_probability_matches_hand_computation():
    patch = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    got = foreground_probability(patch, pos, neg, temperature=2.0)
    # patch 0: cos 1 vs 0 -> e^2 / (e^2 + e^0); patch 1 the mirror image
    p = math.exp(2) / (math.exp(2) + 1)
    assert torch.allclose(got, torch.tensor([p, 1 - p]), atol=1e-6)


def test_self_similarity_and_attention_rules():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # B=1, heads=1, T=2, d=2
    w = self_similarity(a, scale=1.0)
    row0 = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    row1 = torch.softmax(torch.tensor([0.0, 4.0]), 0)
    assert torch.allclose(w[0, 0], torch.stack([row0, row1]))
    q, k = a, a.flip(-1)
    sclip = attention_weights("qq+kk", q, k, 1.0, (1, 1))
    assert torch.allclose(sclip, self_similarity(q, 1.0) + self_similarity(k, 1.0))
    assert attention_weights("none", q, k, 1.0, (1, 1)) is None
    g = gaussian_window(1, 2, sigma=1.0)
    assert torch.allclose(g, torch.tensor([[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]]))
    q3 = torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]]])  # the class token and a 1x2 grid
    naclip = attention_weights("kk+gauss", q3, q3, 1.0, (1, 2), sigma=1.0)
    bias = torch.zeros(3, 3)
    bias[1:, 1:] = g  # the class token's row and column get no Gaussian
    assert torch.allclose(naclip, (q3 @ q3.transpose(-1, -2) + bias).softmax(-1))


def test_artefact_guard_replaces_outlier_by_neighbour_median():
    tokens = torch.arange(9, dtype=torch.float32).view(1, 3, 3, 1).repeat(1, 1, 1, 2) / 10 + 1
    tokens[0, 1, 1] = 100.0
    mask = artefact_mask(tokens.norm(dim=-1), z=3.0)
    assert mask.sum() == 1 and mask[0, 1, 1]
    fixed = neighbour_median(tokens, mask)
    neighbours = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8], dtype=torch.float32) / 10 + 1
    assert torch.allclose(fixed[0, 1, 1], neighbours.median().repeat(2))  # torch's lower median, as nanmedian
    assert torch.equal(fixed[0, 0], tokens[0, 0])
    assert not artefact_mask(tokens.norm(dim=-1), z=0).any()


def test_pamr_on_flat_image_averages_the_8_neighbours():
    image = torch.full((1, 3, 5, 5), 0.5)
    m = torch.zeros(1, 5, 5)
    m[0, 2, 2] = 1.0
    out = pamr(image, m, iterations=1, dilations=(1,))
    assert out[0, 2, 2].item() == 0.0  # a pixel is not its own neighbour
    assert out[0, 1, 1].item() == pytest.approx(1 / 8)
    assert out[0, 0, 0].item() == pytest.approx(0.0)
    assert out.sum().item() == pytest.approx(1.0)


def test_to_image_size_and_affinity_refine():
    up = to_image_size(torch.ones(2, 2, 2), 32, (28, 28))
    assert up.shape == (2, 28, 28) and torch.allclose(up, torch.ones_like(up))
    cam = torch.tensor([[1.0, 0.0, 0.0]])
    aff = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.allclose(affinity_refine(cam, aff, 1), torch.tensor([[1.0, 1.0, 0.0]]), atol=1e-6)
    assert pseudo_labels(torch.tensor([0.9, 0.5, 0.1]), 0.6, 0.35).tolist() == [1.0, -1.0, 0.0]


# ---- diagnostics ----------------------------------------------------------------------

def test_auroc_hand_case_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4)(0.8>0.1)(0.4=0.4 half)(0.4>0.1) = 3.5/4
    assert auroc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)
    assert auroc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert auroc(np.ones(3), np.ones(3)) is None


def test_pointing_game():
    maps = np.zeros((2, 4, 4))
    maps[0, 1, 1] = 1
    maps[1, 3, 3] = 1
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 1, 1] = True
    assert pointing_game(maps, masks, tolerance=0) == 0.5
    assert pointing_game(maps, masks, tolerance=2) == 1.0


def test_mass_share_per_image_with_nan_for_an_empty_map():
    maps = torch.zeros(2, 2, 2, dtype=torch.float64)
    maps[0] = torch.tensor([[1.0, 3.0], [0.0, 4.0]])  # mass 8, of which 3 + 4 inside the region
    region = torch.tensor([[False, True], [False, True]])
    share = mass_share(maps, region)
    assert share.dtype == torch.float64 and share.shape == (2,)
    assert share[0].item() == 7 / 8 and share[1].isnan()


def test_report_warns_on_inverted_map(digits):
    digits_split = Split("train", digits.images, np.zeros(len(digits), np.int64), digits.images[:, 0])
    good = (digits.images[:, 0] > DIGIT_THRESHOLD).astype(np.float32)
    assert map_report(good, digits_split)["auroc"] == 1.0
    assert not map_report(good, digits_split)["warnings"]
    bad = map_report(1 - good, digits_split)
    assert bad["auroc"] == 0.0 and "inverted" in bad["warnings"][0]


# ---- backends -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_clip_variants_shape_and_range(variant, clip_pair, digits):
    gen = ClipMaps(vlm=clip_pair, variant=variant, input_size=32, flip=variant == "naclip",
                   refine="pamr" if variant == "sclip" else "none")
    maps = gen.generate(digits)
    assert maps.shape == (6, 28, 28) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.std() > 0
    assert gen.last_stats["patches"] == 6 * 16


def test_clip_fingerprint_and_weights_identity(clip_pair):
    a = ClipMaps(vlm=clip_pair, input_size=32)
    assert a.fingerprint() == ClipMaps(vlm=clip_pair, input_size=32, batch_size=3).fingerprint()
    other_prompt = PromptSpec(positive=("a digit",))
    assert a.fingerprint() != ClipMaps(vlm=clip_pair, input_size=32, prompts=other_prompt).fingerprint()
    assert a.fingerprint() != ClipMaps(vlm=tiny_clip(seed=1), input_size=32).fingerprint()
    d = a.describe()
    assert d["kind"] == "vlm" and d["real_vlm"] is False and "random-init test model" in d["weights"]
    assert get_map_source("clearclip", vlm=clip_pair).variant == "clearclip"
    with pytest.raises(L2LError, match="negative"):
        ClipMaps(vlm=clip_pair, prompts=PromptSpec(negative=()))
    with pytest.raises(L2LError, match="multiple of the patch"):
        ClipMaps(vlm=clip_pair, input_size=30).generate(as_split(np.zeros((1, 1, 28, 28), np.uint8)))


def test_input_size_interpolates_position_embeddings(clip_pair, digits):
    maps = ClipMaps(vlm=clip_pair, input_size=48).generate(digits)
    assert maps.shape == (6, 28, 28)


def test_local_folder_weights_keep_the_random_init_mark(tmp_path, digits):
    folder = save_tiny_clip(tmp_path / "clip")
    w = load_clip(str(folder))
    assert w.identity.startswith("local:random-init test model:") and not w.is_real
    assert ClipMaps(vlm=str(folder), input_size=32).generate(digits).shape == (6, 28, 28)


def test_missing_model_offline_fails_fast_in_one_line():
    t0 = time.perf_counter()
    with pytest.raises(L2LError) as e:
        load_clip("openai/clip-vit-base-patch16")
    assert time.perf_counter() - t0 < 2.0
    assert "\n" not in str(e.value) and "--vlm PATH" in str(e.value)
    with pytest.raises(L2LError, match="no CLIP folder"):
        load_clip("./does/not/exist")


def test_weclip_trains_and_reloads_its_decoder(tmp_path, clip_pair, digits):
    opts = dict(vlm=clip_pair, dino=tiny_dino(), input_size=32, iterations=4, train_images=6, batch_size=3)
    gen = WeCLIPMaps(**opts)
    gen.prepare(digits, tmp_path)
    maps = gen.generate(digits)
    assert len(gen.train_log) == 4 and all(np.isfinite(gen.train_log))
    assert maps.shape == (6, 28, 28) and 0 <= maps.min() and maps.max() <= 1
    again = WeCLIPMaps(**opts)
    again.prepare(digits, tmp_path)
    assert again.train_log == [] and np.allclose(again.generate(digits), maps, atol=1e-5)
    hard = WeCLIPMaps(**{**opts, "hard": True}).generate(digits)
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert gen.describe()["real_vlm"] is False and gen.config()["iterations"] == 4


def test_image_folder_of_mixed_sizes(tmp_path, clip_pair):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (40, 30), "b.jpg": (40, 30), "c.png": (17, 23)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    out = folder_maps(ClipMaps(vlm=clip_pair, input_size=32), tmp_path, tmp_path / "maps")
    assert {k: v.shape for k, v in out.items()} == {"a.png": (40, 30), "b.jpg": (40, 30), "c.png": (17, 23)}
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["a.png", "b.png", "c.png"]


# ---- cache ----------------------------------------------------------------------------

@dataclass
class Counting(MapGenerator):
    """Cheap deterministic maps that count calls and can die mid-run."""

    name: ClassVar[str] = "counting"
    kind: ClassVar[str] = "image-statistic"
    fail_on_call: int = -1

    def __post_init__(self):
        self.calls = 0

    def config(self) -> dict:
        return {}

    def generate(self, split: ImageSet) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        return np.asarray(split.images)[:, 0].astype(np.float32) / 255.0


@pytest.fixture
def ramp():
    images = (np.arange(10 * 4 * 4) % 256).astype(np.uint8).reshape(10, 1, 4, 4)
    return as_split(images, "train")


def test_cache_resumes_after_a_kill(tmp_path, ramp):
    with pytest.raises(KeyboardInterrupt):
        cached_maps(Counting(fail_on_call=2), "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False)
    resumed = Counting()
    maps = cached_maps(resumed, "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False)
    assert resumed.calls == 2  # chunks 1 and 2; chunk 0 came from disk
    expected = np.round(ramp.images[:, 0] / 255.0 * 255) / 255.0
    assert np.allclose(maps, expected)
    again = Counting()
    assert np.array_equal(cached_maps(again, "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False), maps)
    assert again.calls == 0
    assert load_map_set("counting", "toy", ramp, tmp_path)[1]["name"] == "counting"


def test_corrupt_chunk_is_detected_and_regenerated(tmp_path, ramp, capsys):
    maps = cached_maps(Counting(), "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False)
    chunk = cache_folder(Counting(), "toy", ramp, tmp_path) / "chunk-00001.npy"
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    gen = Counting()
    assert np.array_equal(cached_maps(gen, "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False), maps)
    assert gen.calls == 1 and "hash check" in capsys.readouterr().err
    meta = chunk.parent / "meta.json"
    meta.write_text(meta.read_text().replace('"fingerprint"', '"fingerprint": "0", "x"'))
    gen = Counting()
    cached_maps(gen, "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False)
    assert gen.calls == 3 and "does not match" in capsys.readouterr().err


def test_not_decoy_zeroes_exactly_the_decoy_square(datasets):
    split = datasets["decoymnist"].train.subset(np.arange(50))
    maps = get_map_source("not-decoy").generate(split)
    assert maps.shape == (50, 28, 28) and set(np.unique(maps)) == {0.0, 1.0}
    for m, (top, left) in zip(maps, split.corners):
        assert (m == 0).sum() == 25 and (m[top:top + 5, left:left + 5] == 0).all()
    with pytest.raises(L2LError, match="needs a data set with a decoy square"):
        get_map_source("not-decoy").generate(datasets["colormnist"].train.subset(np.arange(5)))


def test_digit_sources_refuse_images_without_a_digit(digits):
    for source in ("oracle", "degraded-oracle"):
        with pytest.raises(L2LError, match=f"map source {source} needs the clean digit") as e:
            get_map_source(source).generate(digits)
        assert "\n" not in str(e.value) and "--dataset" in str(e.value)
    with pytest.raises(L2LError, match="map quality needs the clean digit"):
        map_quality(np.zeros((6, 28, 28)), digits)


def test_stats_default_is_empty_and_never_shared():
    a, b = Counting(), Counting()
    assert a.last_stats == {} and a.device_used == "cpu"
    with pytest.raises(TypeError):
        a.last_stats["patches"] = 1  # the class default is read-only: generators assign their own dict
    a.last_stats = {"patches": 1}
    assert b.last_stats == {}


def test_cheap_sources_bypass_the_cache(tmp_path, digits):
    maps = cached_maps(get_map_source("intensity"), "toy", digits, cache_dir=tmp_path)
    assert maps.shape == (6, 28, 28) and not any(tmp_path.iterdir())


# ---- precomputed ----------------------------------------------------------------------

def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_precomputed_png_nonblack_is_foreground(tmp_path, ramp):
    for i in range(10):
        rgb = np.zeros((4, 4, 3), np.uint8)
        rgb[i % 4, :, 2] = 3  # dark blue still counts: any non-black pixel is foreground
        _write_png(tmp_path / f"train_{i:05d}.png", rgb)
    gen = PrecomputedMaps(path=str(tmp_path))
    maps = cached_maps(gen, "toy", ramp, cache_dir=tmp_path / "cache", chunk_size=4, progress=False)
    assert maps.shape == (10, 4, 4) and maps[5].sum() == 4 and maps[5, 1].all()
    assert gen.kind == "external"


def test_precomputed_png_errors_name_offenders(tmp_path, ramp):
    for i in range(12):
        _write_png(tmp_path / f"{i}.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(L2LError, match=r"2 keys not in split train: 10, 11"):
        PrecomputedMaps(path=str(tmp_path)).generate(ramp)
    for i in (3, 7, 10, 11):
        (tmp_path / f"{i}.png").unlink()
    with pytest.raises(L2LError, match=r"lack 2 of 10 images: 3, 7"):
        PrecomputedMaps(path=str(tmp_path)).generate(ramp)
    _write_png(tmp_path / "3.png", np.zeros((5, 4), np.uint8))
    (tmp_path / "7.png").write_bytes(b"not a png")
    with pytest.raises(L2LError, match=r"cannot be read: 7"):
        PrecomputedMaps(path=str(tmp_path)).generate(ramp)
    _write_png(tmp_path / "7.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(L2LError, match=r"not 4x4: 3 \(5, 4\)"):
        PrecomputedMaps(path=str(tmp_path)).generate(ramp)


def test_precomputed_npy_and_npz(tmp_path, ramp):
    arr = np.random.default_rng(0).random((10, 4, 4)).astype(np.float32)
    np.save(tmp_path / "maps.npy", arr)
    assert np.allclose(PrecomputedMaps(path=str(tmp_path / "maps.npy")).generate(ramp), arr)
    np.save(tmp_path / "short.npy", arr[:8])
    with pytest.raises(L2LError, match=r"lack 2 of 10 images: 8, 9"):
        PrecomputedMaps(path=str(tmp_path / "short.npy")).generate(ramp)
    np.save(tmp_path / "long.npy", np.concatenate([arr, arr[:1]]))
    with pytest.raises(L2LError, match=r"1 keys not in split train: 10"):
        PrecomputedMaps(path=str(tmp_path / "long.npy")).generate(ramp)
    np.savez(tmp_path / "keyed.npz", **{f"img_{i}": (arr[i] * 255).astype(np.uint8) for i in range(10)})
    assert np.allclose(PrecomputedMaps(path=str(tmp_path / "keyed.npz")).generate(ramp), arr, atol=1 / 255)
    np.save(tmp_path / "bad.npy", arr * 3)
    with pytest.raises(L2LError, match=r"outside \[0, 1\]"):
        PrecomputedMaps(path=str(tmp_path / "bad.npy")).generate(ramp)


# ---- every generator checks its own fields ---------------------------------------------------

FIELD_CASES = [
    ("clip", {"input_size": 0}, "--input-size must be an integer in [1, 4096]"),
    ("clip", {"input_size": 32.5}, "--input-size must be an integer"),
    ("clip", {"input_size": True}, "--input-size must be an integer"),
    ("clip", {"input_size": 30}, "not a multiple of the patch size 8"),
    ("clip", {"batch_size": "8"}, "--batch-size must be an integer >= 1"),
    ("clip", {"batch_size": -4}, "--batch-size must be an integer >= 1"),
    ("clip", {"guard_z": -1.0}, "--guard-z must be a finite number >= 0"),
    ("clip", {"guard_z": float("nan")}, "--guard-z must be a finite number"),
    ("clip", {"sigma": 0}, "map option sigma must be a finite number > 0"),
    ("clip", {"flip": "yes"}, "--flip must be true or false"),
    ("clip", {"device": "tpu"}, "--device must be auto, cpu, cuda or cuda:N"),
    ("clip", {"device": "cuda:x"}, "--device must be auto, cpu, cuda or cuda:N"),
    ("clip", {"variant": "gradcam"}, "unknown --variant 'gradcam'"),
    ("clip", {"refine": 3}, "unknown --refine 3"),
    ("clip", {"vlm": 42}, "--vlm must be a folder or a hub id"),
    ("clip", {"vlm": ""}, "--vlm must be a folder or a hub id"),
    ("clip", {"prompts": {"positive": ["a digit"], "colour": 1}}, "unknown prompt field(s) colour"),
    ("clip", {"prompts": {"templates": ["a photo"]}}, "has no {} for the prompt"),
    ("clip", {"prompts": {"templates": ["{x}"]}}, "not a valid format string"),
    ("clip", {"prompts": {"temperature": "hot"}}, "--temperature must be a finite number > 0"),
    ("clip", {"prompts": {"positive": [""]}}, "--prompt must be non-empty text"),
    ("clip", {"prompts": {"negative": [3]}}, "must be a list of texts"),
    ("clip", {"window": -1}, "--window must be an integer in [0, 4096]"),
    ("clip", {"window": 32, "stride": 0}, "--stride must be an integer in [1, 32]"),
    ("maskclip", {"stride": 16}, "--stride 16 needs a sliding window"),
    ("clip", {"input_size": 48, "window": 20}, "--window 20 is not a multiple of the patch size 8"),
    ("clip", {"repair": 1}, "--repair must be true or false"),
    ("sclip", {"prompts": {"temperature": 0}}, "--temperature must be a finite number > 0"),
    ("gals", {"method": "attention"}, "unknown --method 'attention'"),
    ("gals", {"texts": ()}, "--prompt must be one or more non-empty texts"),
    ("gals", {"input_size": 20}, "--input-size 20 is not a multiple of the patch size 8"),
    ("naclip", {"input_size": -1}, "--input-size must be an integer"),
    ("weclip", {"iterations": 0}, "--iterations must be an integer >= 1"),
    ("weclip", {"iterations": 2.5}, "--iterations must be an integer >= 1"),
    ("weclip", {"train_images": -3}, "--train-images must be an integer >= 1"),
    ("weclip", {"lr": 0}, "map option lr must be a finite number > 0"),
    ("weclip", {"layers": 0}, "map option layers must be an integer >= 1"),
    ("weclip", {"affinity_steps": -1}, "map option affinity_steps must be an integer >= 0"),
    ("weclip", {"fg_threshold": 1.5}, "map option fg_threshold must be a finite number >= 0 and <= 1"),
    ("weclip", {"bg_threshold": 0.7}, "need bg_threshold < fg_threshold"),
    ("weclip", {"hard": 1}, "--hard must be true or false"),
    ("weclip", {"seed": -1}, "map option seed must be an integer in [0, 4294967295]"),
    ("weclip", {"guard_z": float("inf")}, "--guard-z must be a finite number"),
    ("weclip", {"dino": 3}, "--dino must be a folder or a hub id"),
    ("oracle", {"threshold": 300}, "map option threshold must be an integer in [0, 254]"),
    ("intensity", {"threshold": -1}, "map option threshold must be an integer in [0, 254]"),
    ("degraded-oracle", {"degradation": "smear"}, "unknown degradation 'smear'"),
    ("degraded-oracle", {"degradation": "blur", "strength": 1e9}, r"strength of blur must be a number in [0, 28]"),
    ("degraded-oracle", {"degradation": "shift", "strength": -1}, r"strength of shift must be a number in [0, 28]"),
    ("degraded-oracle", {"degradation": "noise", "strength": float("nan")}, "strength of noise must be"),
    ("degraded-oracle", {"seed": -2}, "map option seed must be an integer"),
    ("precomputed", {"path": 5}, "needs --path"),
]


@pytest.mark.parametrize("source,options,needle", FIELD_CASES,
                         ids=[f"{s}-{'-'.join(map(str, o))}" for s, o, _ in FIELD_CASES])
def test_generators_check_their_own_fields(source, options, needle, clip_pair):
    if source in ("clip", "maskclip", "sclip", "naclip", "weclip", "gals") and "vlm" not in options:
        options = {"vlm": clip_pair, **options}
    with pytest.raises(L2LError) as e:
        get_map_source(source, **options).check_ready()  # fields at construction, the weights' patch size here
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_construction_touches_no_weights_so_runs_can_be_planned(tmp_path):
    gen = get_map_source("clip", vlm="some/clip-not-downloaded-yet")  # nothing located yet
    with pytest.raises(L2LError, match="not in the local Hugging Face cache"):
        gen.check_ready()
    with pytest.raises(L2LError, match="no CLIP folder"):
        get_map_source("weclip", vlm=str(tmp_path / "missing"), iterations=1).check_ready()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_at_construction(clip_pair):
    for source in ("clip", "weclip"):
        with pytest.raises(L2LError, match="not available on this machine; pass --device cpu"):
            get_map_source(source, vlm=clip_pair, device="cuda")


def test_valid_fields_pass_and_keep_their_fingerprint(clip_pair):
    """Checks normalise nothing that the fingerprint sees: a list of prompts equals the tuple."""
    a = ClipMaps(vlm=clip_pair, input_size=32, device="auto")
    b = ClipMaps(vlm=clip_pair, input_size=32, device="cpu",
                 prompts={"positive": ["handwritten digit"], "negative": ["background", "black", "dark"]})
    assert a.fingerprint() == b.fingerprint()
    assert get_map_source("degraded-oracle", degradation="blur", strength=28).strength == 28
    assert get_map_source("oracle", threshold=0).threshold == 0


def test_precomputed_files_are_checked_when_named(tmp_path):
    np.save(tmp_path / "flat.npy", np.float32(0.5))
    with pytest.raises(L2LError, match=r"shape \(\); expected \(N, H, W\)"):
        PrecomputedMaps(path=str(tmp_path / "flat.npy"))
    for name, data in (("empty.npy", b""), ("empty.npz", b""), ("bad.npz", b"PK\x03\x04junk")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(L2LError, match="is corrupt or unreadable"):
            PrecomputedMaps(path=str(tmp_path / name))


def test_a_damaged_saved_decoder_is_trained_again(tmp_path, clip_pair, digits, capsys):
    opts = dict(vlm=clip_pair, input_size=32, iterations=2, train_images=6, batch_size=3)
    WeCLIPMaps(**opts).prepare(digits, tmp_path)
    (saved,) = tmp_path.glob("decoder-*.pt")
    saved.write_bytes(b"")
    again = WeCLIPMaps(**opts)
    again.prepare(digits, tmp_path)
    assert len(again.train_log) == 2 and "training it again" in capsys.readouterr().err
    assert saved.stat().st_size > 0


def test_read_only_cache_readers_never_write(tmp_path, ramp):
    from learning_to_look.maps import list_cached, read_cached

    cached_maps(Counting(), "toy", ramp, cache_dir=tmp_path, chunk_size=4, progress=False)
    folder = cache_folder(Counting(), "toy", ramp, tmp_path)
    (folder / "chunk-00001.npy").write_bytes(b"")
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(L2LError, match=r"chunk 1 of the cached maps .* is corrupt.*l2l maps generate"):
        read_cached(Counting(), "toy", ramp, tmp_path)
    with pytest.raises(L2LError, match="chunk 1"):
        load_map_set("counting", "toy", ramp, tmp_path)
    (entry,) = list_cached(tmp_path)
    assert entry.folder == folder and entry.problem is None  # the file is there: only a check reads it
    (folder / "chunk-00002.npy").unlink()
    assert "chunk 2" in list_cached(tmp_path)[0].problem
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == {p: t for p, t in before.items() if p.exists()}
