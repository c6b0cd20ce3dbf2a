"""The bad-input battery for `l2l data ...` and `l2l maps ...`: wrong types, out-of-range
numbers, unknown choices, missing files, folders where files are expected, damaged data
files, damaged map caches, damaged `--vlm` folders, a held lock. Every case runs the CLI
in-process and must exit 2 with exactly one line on stderr (``error: ...``), no traceback,
and a keyword of the expected message. Read-only commands never build or regenerate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from learning_to_look.cli import main

LIMIT = ["--limit", "4"]


# ---------------------------------------------------------------- shared material

@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("vlm") / "tiny-clip")


@pytest.fixture(scope="module")
def maps_npy(tmp_path_factory) -> Path:
    """Precomputed maps for the first 8 training images (a cheap, cacheable source)."""
    path = tmp_path_factory.mktemp("pre") / "maps.npy"
    np.save(path, np.random.default_rng(0).random((8, 28, 28)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def cache_src(tmp_path_factory, maps_npy, data_dir) -> Path:
    """A complete cache entry of the precomputed maps above, generated once."""
    cache = tmp_path_factory.mktemp("cache-src")
    rc = main(["maps", "generate", *_pre(maps_npy, data_dir), "--cache-dir", str(cache), "--quiet"])
    assert rc == 0
    return cache


def _pre(npy: Path, data_dir: Path, limit: int = 8) -> list[str]:
    return ["--backend", "precomputed", "--path", str(npy), "--dataset", "decoymnist", "--data-dir", str(data_dir),
            "--limit", str(limit)]


class Ctx:
    """What a case may use; the expensive parts are built on first use."""

    def __init__(self, request, tmp: Path, data: Path):
        self.request, self.tmp, self.data = request, tmp, data

    @property
    def vlm(self) -> str:
        return str(self.request.getfixturevalue("tiny_vlm"))

    @property
    def npy(self) -> Path:
        return self.request.getfixturevalue("maps_npy")

    def clip(self, *extra: str) -> list[str]:
        return ["maps", "generate", "--backend", "clip", "--vlm", self.vlm, "--input-size", "32", "--dataset",
                "decoymnist", "--data-dir", str(self.data), *LIMIT, "--cache-dir", str(self.tmp / "cache"),
                "--quiet", *extra]

    def weclip(self, *extra: str) -> list[str]:
        return ["maps", "generate", "--backend", "weclip", "--vlm", self.vlm, "--input-size", "32", "--dataset",
                "decoymnist", "--data-dir", str(self.data), *LIMIT, "--cache-dir", str(self.tmp / "cache"),
                "--quiet", "--iterations", "2", "--train-images", "4", *extra]

    def oracle(self, command: str = "generate", *extra: str) -> list[str]:
        return ["maps", command, "--backend", "oracle", "--dataset", "decoymnist", "--data-dir", str(self.data),
                *extra]

    def damaged_vlm(self, damage) -> str:
        folder = self.tmp / "vlm"
        shutil.copytree(self.vlm, folder)
        damage(folder)
        return str(folder)

    def with_vlm(self, vlm: str, *extra: str) -> list[str]:
        return ["maps", "generate", "--backend", "clip", "--vlm", vlm, "--input-size", "32", "--dataset",
                "decoymnist", "--data-dir", str(self.data), *LIMIT, "--cache-dir", str(self.tmp / "cache"),
                "--quiet", *extra]

    def pre_file(self, name: str, write) -> list[str]:
        path = self.tmp / name
        write(path)
        return ["maps", "generate", *_pre(path, self.data, 4), "--cache-dir", str(self.tmp / "cache"), "--quiet"]

    def cache(self) -> tuple[Path, Path]:
        """A private copy of the generated cache and its one entry folder."""
        src = self.request.getfixturevalue("cache_src")
        cache = self.tmp / "cache"
        shutil.copytree(src, cache)
        (entry,) = [p.parent for p in cache.glob("*/*/*/meta.json")]
        return cache, entry

    def cached(self, command: str, cache: Path, *extra: str) -> list[str]:
        return ["maps", command, *_pre(self.npy, self.data), "--cache-dir", str(cache), *extra]

    def data_copy(self, name: str, as_name: str | None = None) -> Path:
        folder = self.tmp / "data"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(self.data / f"{name}.npz", folder / f"{as_name or name}.npz")
        return folder

    def forged(self, name: str, source: str, edit_header=None, edit_arrays=None) -> Path:
        """``name``.npz made from the first rows of ``source``'s arrays with a consistent header
        (hashes and shapes recomputed), then edited."""
        from learning_to_look.io import sha256_array

        with np.load(self.data / f"{source}.npz", allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k][:10] for k in z.files if k != "header"}
        if edit_arrays:
            arrays = edit_arrays(arrays)
        header["arrays"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "sha256": sha256_array(v)}
                            for k, v in arrays.items()}
        if edit_header:
            header = edit_header(header)
        folder = self.tmp / "data"
        folder.mkdir(exist_ok=True)
        np.savez(folder / f"{name}.npz", header=np.array(json.dumps(header)), **arrays)
        return folder


CASES: dict[str, tuple] = {}


def case(*keywords: str, skip: str | None = None):
    def register(fn):
        CASES[fn.__name__] = (fn, keywords, skip)
        return fn
    return register


def _edit_json(path: Path, **changes):
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


# ---------------------------------------------------------------- maps: numbers, types and choices

@case("--limit")
def limit_negative(c): return c.oracle("generate", "--limit", "-5")
@case("--limit")
def limit_zero(c): return c.oracle("generate", "--limit", "0")
@case("--limit")
def limit_not_a_number(c): return c.oracle("generate", "--limit", "ten")
@case("--limit")
def check_limit_zero(c): return c.oracle("check", "--limit", "0")
@case("--split")
def unknown_split(c): return c.oracle("generate", "--split", "val", *LIMIT)
@case("unknown map source")
def unknown_backend(c): return ["maps", "generate", "--backend", "gradcam", "--data-dir", str(c.data), *LIMIT]
@case("unknown data set")
def unknown_dataset(c): return ["maps", "generate", "--backend", "oracle", "--dataset", "fashion", *LIMIT]
@case("--input-size")
def input_size_zero(c): return c.clip("--input-size", "0")
@case("--input-size")
def input_size_negative(c): return c.clip("--input-size", "-32")
@case("--input-size")
def input_size_not_an_integer(c): return c.clip("--input-size", "3.5")
@case("multiple of the patch")
def input_size_not_a_patch_multiple(c): return c.clip("--input-size", "30")
@case("--batch-size")
def batch_size_zero(c): return c.clip("--batch-size", "0")
@case("--batch-size")
def weclip_batch_size_negative(c): return c.weclip("--batch-size", "-2")
@case("--train-images")
def weclip_train_images_negative(c): return c.weclip("--train-images", "-3")
@case("--train-images")
def weclip_train_images_zero(c): return c.weclip("--train-images", "0")
@case("--iterations")
def weclip_iterations_zero(c): return c.weclip("--iterations", "0")
@case("--iterations")
def weclip_iterations_negative(c): return c.weclip("--iterations", "-1")
@case("--guard-z")
def guard_z_negative(c): return c.clip("--guard-z", "-1")
@case("--guard-z")
def guard_z_nan(c): return c.clip("--guard-z", "nan")
@case("--guard-z")
def weclip_guard_z_inf(c): return c.weclip("--guard-z", "inf")
@case("--temperature")
def temperature_zero(c): return c.clip("--temperature", "0")
@case("--temperature")
def temperature_inf(c): return c.clip("--temperature", "inf")
@case("--temperature")
def temperature_nan(c): return c.clip("--temperature", "nan")
@case("--device")
def device_tpu(c): return c.clip("--device", "tpu")
@case("--device")
def device_cuda_x(c): return c.clip("--device", "cuda:x")
@case("CUDA", skip="CUDA is available" if torch.cuda.is_available() else None)
def device_cuda_without_cuda(c): return c.clip("--device", "cuda")
@case("CUDA", skip="CUDA is available" if torch.cuda.is_available() else None)
def weclip_device_cuda_without_cuda(c): return c.weclip("--device", "cuda:0")
@case("variant")
def unknown_variant(c): return c.clip("--variant", "gradcam")
@case("refine")
def unknown_refinement(c): return c.clip("--refine", "crf")
@case("{}")
def template_without_placeholder(c): return c.clip("--templates", "a photo")
@case("template")
def template_with_bad_fields(c): return c.clip("--templates", "a {0} and {1}")
@case("--prompt")
def empty_prompt(c): return c.clip("--prompt", " ")
@case("--negatives")
def empty_negatives(c): return c.clip("--negatives", ",")
@case("does not apply")
def flag_of_another_backend(c): return c.oracle("generate", "--iterations", "3", *LIMIT)
@case("--out")
def out_without_images(c): return c.oracle("generate", "--out", str(c.tmp / "o"), *LIMIT)
@case("--key")
def precomputed_unknown_key(c): return ["maps", "generate", *_pre(c.npy, c.data, 4), "--key", "row"]
@case("--png-mode")
def precomputed_unknown_png_mode(c): return ["maps", "generate", *_pre(c.npy, c.data, 4), "--png-mode", "rgb"]


# ---------------------------------------------------------------- maps show / list / check / images

@case("--n")
def show_n_negative(c): return c.oracle("show", "--n", "-3", *LIMIT, "--out", str(c.tmp / "g.png"))
@case("--n")
def show_n_zero(c): return c.oracle("show", "--n", "0", *LIMIT, "--out", str(c.tmp / "g.png"))
@case("--out")
def show_out_is_a_folder(c): return c.oracle("show", *LIMIT, "--out", str(c.tmp))
@case("--cache-dir")
def list_cache_dir_is_a_file(c): return ["maps", "list", "--cache-dir", str(c.npy)]
@case("--cache-dir")
def generate_cache_dir_is_a_file(c): return ["maps", "generate", *_pre(c.npy, c.data, 4), "--cache-dir", str(c.npy)]
@case("--data-dir")
def generate_data_dir_is_a_file(c): return c.oracle("generate", *LIMIT, "--data-dir", str(c.npy))
@case("l2l data build decoymnist")
def check_never_builds_the_data(c): return c.oracle("check", *LIMIT, "--data-dir", str(c.tmp / "none"))
@case("no image folder")
def images_is_a_file(c): return ["maps", "generate", "--backend", "intensity", "--images", str(c.npy), "--out",
                                  str(c.tmp / "out")]


def _bad_png_folder(c):
    folder = c.tmp / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@case("cannot read image")
def images_with_a_corrupt_png(c): return ["maps", "generate", "--backend", "intensity", "--images",
                                          str(_bad_png_folder(c)), "--out", str(c.tmp / "out")]


# ---------------------------------------------------------------- precomputed maps files

@case("no precomputed maps")
def precomputed_missing_file(c): return ["maps", "generate", *_pre(c.tmp / "nope.npy", c.data, 4)]
@case(".npy")
def precomputed_wrong_suffix(c): return c.pre_file("maps.txt", lambda p: p.write_text("0.5"))
@case("(N, H, W)")
def precomputed_0d_npy(c): return c.pre_file("maps.npy", lambda p: np.save(p, np.float32(0.5)))
@case("(N, H, W)")
def precomputed_2d_npy(c): return c.pre_file("maps.npy", lambda p: np.save(p, np.zeros((28, 28), np.float32)))
@case("corrupt")
def precomputed_empty_npy(c): return c.pre_file("maps.npy", lambda p: p.write_bytes(b""))
@case("corrupt")
def precomputed_truncated_npy(c):
    return c.pre_file("maps.npy", lambda p: p.write_bytes(c.npy.read_bytes()[:200]))
@case("corrupt")
def precomputed_empty_npz(c): return c.pre_file("maps.npz", lambda p: p.write_bytes(b""))
@case("corrupt")
def precomputed_garbage_npz(c): return c.pre_file("maps.npz", lambda p: p.write_bytes(b"PK\x03\x04 not a zip"))
@case("(N, H, W)")
def precomputed_4d_npz(c): return c.pre_file("maps.npz", lambda p: np.savez(p, m=np.zeros((4, 1, 28, 28))))
@case("lack")
def precomputed_too_few_maps(c):
    return c.pre_file("maps.npy", lambda p: np.save(p, np.zeros((2, 28, 28), np.float32)))


# ---------------------------------------------------------------- damaged --vlm folders

def _truncate_weights(folder):
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _drop_tokenizer(folder):
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()


@case("corrupt")
def vlm_truncated_weights(c): return c.with_vlm(c.damaged_vlm(_truncate_weights))
@case("corrupt")
def vlm_empty_weights(c): return c.with_vlm(c.damaged_vlm(lambda f: (f / "model.safetensors").write_bytes(b"")))
@case("bert")
def vlm_config_of_another_model(c): return c.with_vlm(c.damaged_vlm(lambda f: _edit_json(f / "config.json",
                                                                                         model_type="bert")))
@case("config.json")
def vlm_config_not_json(c): return c.with_vlm(c.damaged_vlm(lambda f: (f / "config.json").write_text("{oops")))
@case("config.json")
def vlm_without_config(c): return c.with_vlm(c.damaged_vlm(lambda f: (f / "config.json").unlink()))
@case("tokenizer")
def vlm_without_tokenizer(c): return c.with_vlm(c.damaged_vlm(_drop_tokenizer))
@case("vocab")
def vlm_tokenizer_of_another_size(c):
    def grow(folder):
        cfg = json.loads((folder / "config.json").read_text())
        cfg["text_config"]["vocab_size"] = 49408
        (folder / "config.json").write_text(json.dumps(cfg))
    return c.with_vlm(c.damaged_vlm(grow))
@case("no CLIP folder")
def vlm_is_a_file(c): return c.with_vlm(str(c.npy))
@case("DINOv2")
def weclip_dino_empty_folder(c):
    (c.tmp / "dino").mkdir()
    return c.weclip("--dino", str(c.tmp / "dino"))


# ---------------------------------------------------------------- damaged map cache, lock

def _damage_chunk(c, command="check"):
    cache, entry = c.cache()
    chunk = entry / "chunk-00000.npy"
    raw = bytearray(chunk.read_bytes())
    raw[-1] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    return c.cached(command, cache, *(["--out", str(c.tmp / "g.png")] if command == "show" else []))


@case("chunk 0", "l2l maps generate")
def check_corrupt_chunk(c): return _damage_chunk(c)
@case("chunk 0", "l2l maps generate")
def show_corrupt_chunk(c): return _damage_chunk(c, "show")


@case("chunk 0", "l2l maps generate")
def check_empty_chunk(c):
    cache, entry = c.cache()
    (entry / "chunk-00000.npy").write_bytes(b"")
    return c.cached("check", cache)


@case("chunk 0", "l2l maps generate")
def check_missing_chunk(c):
    cache, entry = c.cache()
    (entry / "chunk-00000.npy").unlink()
    return c.cached("check", cache)


@case("meta.json")
def check_meta_not_json(c):
    cache, entry = c.cache()
    (entry / "meta.json").write_text('{"format": 1, "chunks": {')
    return c.cached("check", cache)


@case("meta.json")
def check_meta_incomplete(c):
    cache, entry = c.cache()
    meta = json.loads((entry / "meta.json").read_text())
    del meta["chunk_size"], meta["chunks"]
    (entry / "meta.json").write_text(json.dumps(meta))
    return c.cached("check", cache)


@case("meta.json")
def check_meta_wrong_types(c):
    cache, entry = c.cache()
    _edit_json(entry / "meta.json", chunk_size="many", chunks=[1, 2])
    return c.cached("check", cache)


@case("corrupt")
def list_meta_not_json(c):
    cache, entry = c.cache()
    (entry / "meta.json").write_bytes(b"\x00\xff")
    return ["maps", "list", "--cache-dir", str(cache)]


@case("corrupt")
def list_meta_incomplete(c):
    cache, entry = c.cache()
    (entry / "meta.json").write_text("{}")
    return ["maps", "list", "--cache-dir", str(cache)]


@case("another l2l process")
def generate_while_locked(c):
    cache, entry = c.cache()
    (entry / "meta.json").unlink()  # so that there is work to do
    (entry / ".lock").write_text(str(os.getppid()))
    return c.cached("generate", cache, "--quiet")


# ---------------------------------------------------------------- data

@case("l2l data build decoymnist --data-dir")
def info_never_builds(c): return ["data", "info", "decoymnist", "--data-dir", str(c.tmp / "missing")]
@case("l2l data build colormnist")
def show_never_builds(c): return ["data", "show", "colormnist", "--data-dir", str(c.tmp / "missing"),
                                  "--out", str(c.tmp / "x.png")]
@case("holds the colormnist")
def colormnist_copied_as_decoymnist(c): return ["data", "info", "decoymnist", "--data-dir",
                                                str(c.data_copy("colormnist", "decoymnist"))]
@case("holds the mnist")
def mnist_copied_as_colormnist_for_maps(c):
    return ["maps", "generate", "--backend", "oracle", "--dataset", "colormnist", *LIMIT, "--data-dir",
            str(c.data_copy("mnist", "colormnist"))]
@case("shape")
def header_claims_colour_but_images_are_grey(c):
    def claim(h):
        return {**h, "dataset": "colormnist", "protocol": "ColorMNIST, CDEP protocol (PROTOCOL 2.2)"}
    return ["data", "info", "colormnist", "--data-dir", str(c.forged("colormnist", "mnist", edit_header=claim))]
@case("shape")
def labels_of_the_wrong_shape(c):
    def reshape(a):
        return {**a, "y_test": a["y_test"].reshape(2, 5)}
    return ["data", "info", "mnist", "--data-dir", str(c.forged("mnist", "mnist", edit_arrays=reshape))]
@case("protocol")
def stale_protocol_version(c):
    return ["data", "info", "mnist", "--data-dir",
            str(c.forged("mnist", "mnist", edit_header=lambda h: {**h, "protocol_version": 0}))]
@case("corrupt")
def header_not_a_mapping(c):
    return ["data", "info", "mnist", "--data-dir", str(c.forged("mnist", "mnist", edit_header=lambda h: [1, 2]))]
@case("corrupt")
def info_truncated_file(c):
    folder = c.tmp / "data"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes((c.data / "mnist.npz").read_bytes()[:4000])
    return ["data", "info", "mnist", "--data-dir", str(folder), "--mnist-dir", "/nonexistent"]
@case("corrupt")
def info_empty_file(c):
    folder = c.tmp / "data"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes(b"")
    return ["data", "info", "mnist", "--data-dir", str(folder)]
@case("corrupt")
def info_file_without_header(c):
    folder = c.tmp / "data"
    folder.mkdir()
    np.savez(folder / "mnist.npz", x_train=np.zeros((2, 1, 28, 28), np.uint8))
    return ["data", "info", "mnist", "--data-dir", str(folder)]
@case("corrupt", "l2l data import mine --from YOUR_IMAGES --force")
def info_of_an_import_whose_header_is_unreadable(c):
    folder = c.tmp / "data"
    folder.mkdir()
    (folder / "mine.npz").write_bytes(b"x")
    return ["data", "info", "mine", "--data-dir", str(folder)]
@case("--data-dir")
def info_data_dir_is_a_file(c): return ["data", "info", "mnist", "--data-dir", str(c.npy)]
@case("--data-dir")
def build_data_dir_is_a_file(c): return ["data", "build", "mnist", "--data-dir", str(c.npy)]
@case("--out")
def data_show_out_is_a_folder(c): return ["data", "show", "mnist", "--data-dir", str(c.data), "--out", str(c.tmp)]
@case("cannot write")
def data_show_out_below_a_file(c): return ["data", "show", "mnist", "--data-dir", str(c.data), "--out",
                                           str(c.npy / "x.png")]
@case("end its name in", ".png, .pdf, .svg", "grid.png")
def data_show_out_names_no_figure_format(c): return ["data", "show", "mnist", "--data-dir", str(c.data), "--out",
                                                     str(c.tmp / "grid.txt")]
@case("end its name in")
def maps_show_out_names_no_figure_format(c): return c.oracle("show", *LIMIT, "--out", str(c.tmp / "g.jpeg"))
@case("unknown data set")
def data_info_unknown(c): return ["data", "info", "fashion", "--data-dir", str(c.data)]
@case("mnist folder")
def build_with_missing_mnist_dir(c): return ["data", "build", "mnist", "--data-dir", str(c.tmp / "d"),
                                             "--mnist-dir", str(c.tmp / "no-mnist")]
@case("--out")
def data_show_without_out(c): return ["data", "show", "mnist", "--data-dir", str(c.data)]


# ---------------------------------------------------------------- the battery

@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("L2L_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("L2L_MAPS_DIR", str(tmp_path / "default-cache"))
    monkeypatch.delenv("L2L_DATA_DIR", raising=False)
    monkeypatch.delenv("L2L_VLM", raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_battery_is_big_enough():
    assert len(CASES) >= 45


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, request, data_dir, tmp_path, capsys):
    fn, keywords, skip = CASES[name]
    if skip:
        pytest.skip(skip)
    ctx = Ctx(request, tmp_path, data_dir)
    argv = [str(a) for a in fn(ctx)]
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    print(lines[0])  # shown by `pytest -rP`: the whole battery's messages at a glance
    for k in keywords:
        assert k.lower() in lines[0].lower(), lines[0]
    if argv[:2] in (["data", "info"], ["data", "show"], ["maps", "check"], ["maps", "show"], ["maps", "list"]):
        new = sorted(set(_tree(tmp_path)) - set(before))
        assert not [p for p in new if p.endswith(".npz") or "chunk-" in p or p.endswith("meta.json")], new


def _tree(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*")]
