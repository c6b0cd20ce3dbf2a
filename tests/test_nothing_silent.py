"""Nothing wrong passes silently: a battery of hostile inputs, each ending in one line and
exit 2 or in the right behaviour: the data in every run's identity, verified weights, a
lock that excludes, imports that refuse what they cannot store faithfully, reports that
never end in a traceback, grids and config files sized before they are built, and map
sources that leave torch's thread count alone."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import load_dataset
from learning_to_look.data.imported import import_dataset
from learning_to_look.errors import L2LError
from learning_to_look.io import folder_lock
from learning_to_look.maps import MAP_SOURCES
from learning_to_look.training.run import run

FAST = ["--train-subset", "40", "--epochs", "1", "--quiet"]


def one_line(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle.lower() in lines[0].lower(), err
    return lines[0]


def png(path, value=120, size=(20, 16), mode="RGB", dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    a = np.full(shape, value, dtype)
    Image.fromarray(a).save(path)
    return path


def folder(root, classes=("cat", "dog"), n=(3, 0, 2), masks=None, size=(20, 16)):
    """root/{train,val,test}/<class>/i.png; ``masks``: which splits get masks/."""
    for split, k in zip(("train", "val", "test"), n):
        for c, cls in enumerate(classes):
            for i in range(k):
                png(root / split / cls / f"{i}.png", 60 + 60 * c, size)
                if masks and split in masks:
                    png(root / "masks" / split / cls / f"{i}.png", 255, size, mode="L")
    return root


def write_csv(path, rows, header="path,label,split", bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, *rows]) + "\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def imp(name, src, tmp_path, capsys, *extra):
    return main(["data", "import", name, "--from", str(src), "--data-dir", str(tmp_path / "data"), "--size", "16",
                 "--quiet", *extra])


# ---- import refuses what it cannot store faithfully ----------------------------------------------

@pytest.mark.parametrize("name", ["all", "Pets", "../pets", "pets dir", "-pets", "mnist", "shapes-bg", "pets\n"])
def test_import_refuses_names_outside_the_safe_pattern_or_reserved(name, tmp_path):
    with pytest.raises(L2LError, match="cannot import as"):
        import_dataset(name, folder(tmp_path / "src"), tmp_path / "data", size=16, progress=False)


def test_import_refuses_masks_of_another_size(tmp_path, capsys):
    src = folder(tmp_path / "src", masks=("train", "test"))
    png(src / "masks" / "train" / "cat" / "0.png", 255, (40, 16), mode="L")
    one_line(capsys, imp("pets", src, tmp_path, capsys), "its mask is 40x16, the image 20x16")


def test_import_refuses_a_mask_path_outside_the_masks_folder(tmp_path, capsys):
    src = folder(tmp_path / "src", n=(3, 0, 2))
    (tmp_path / "list" / "masks").mkdir(parents=True)
    rows = [f"{src / 'train' / c / f'{i}.png'},{c},train" for c in ("cat", "dog") for i in range(3)]
    rows += [f"{src / 'test' / c / f'{i}.png'},{c},test" for c in ("cat", "dog") for i in range(2)]
    one_line(capsys, imp("pets", write_csv(tmp_path / "list" / "list.csv", rows), tmp_path, capsys),
             "would lie outside")


def _csv_rows(src, extra=()):
    rows = [f"train/{c}/{i}.png,{c},train" for c in ("cat", "dog") for i in range(3)]
    return rows + [f"test/{c}/{i}.png,{c},test" for c in ("cat", "dog") for i in range(2)] + list(extra)


def test_import_refuses_a_file_in_two_splits(tmp_path, capsys):
    src = folder(tmp_path / "src")
    csv = write_csv(src / "list.csv", _csv_rows(src, ["train/cat/0.png,cat,test"]))
    one_line(capsys, imp("pets", csv, tmp_path, capsys), "more than one split")


def test_import_drops_a_row_repeated_in_one_split_and_says_so(tmp_path, capsys):
    src = folder(tmp_path / "src")
    csv = write_csv(src / "list.csv", _csv_rows(src, ["train/cat/0.png,cat,train"]))
    assert imp("pets", csv, tmp_path, capsys) == 0
    assert "1 duplicate row(s)" in capsys.readouterr().err
    assert len(load_dataset("pets", tmp_path / "data", build=False).train) == 6


def test_import_refuses_a_single_class(tmp_path, capsys):
    one_line(capsys, imp("pets", folder(tmp_path / "src", classes=("cat",)), tmp_path, capsys), "at least two")


@pytest.mark.parametrize("bad", ["cat\tdog", "c\x00t", "cat\x1b[31m"])
def test_import_refuses_control_characters_in_labels(bad, tmp_path, capsys):
    src = folder(tmp_path / "src")
    rows = [r.replace(",cat,", f",{bad},") for r in _csv_rows(src)]
    csv = tmp_path / "src" / "list.csv"
    csv.write_bytes(("path,label,split\n" + "\n".join(rows) + "\n").encode())
    one_line(capsys, imp("pets", csv, tmp_path, capsys), "control characters")


def test_import_refuses_control_characters_in_file_names(tmp_path, capsys):
    src = folder(tmp_path / "src")
    png(src / "train" / "cat" / "bad\tname.png")
    one_line(capsys, imp("pets", src, tmp_path, capsys), "control characters")


def test_import_refuses_images_over_the_pixel_cap_and_the_cap_can_be_raised(tmp_path, capsys):
    src = folder(tmp_path / "src")
    one_line(capsys, imp("pets", src, tmp_path, capsys, "--max-pixels", "100"), "raise --max-pixels")
    assert imp("pets", src, tmp_path, capsys, "--max-pixels", "1000") == 0


def test_import_scales_16_bit_images_instead_of_clipping_them(tmp_path, capsys):
    src = folder(tmp_path / "src")
    png(src / "train" / "cat" / "0.png", 32768, mode="L", dtype=np.uint16)  # mid-grey in 16 bits
    assert imp("pets", src, tmp_path, capsys) == 0
    ds = load_dataset("pets", tmp_path / "data", build=False)
    assert abs(int(ds.train.images[ds.train.names.index("train/cat/0.png")].max()) - 128) <= 1  # not 255


def test_import_accepts_a_csv_with_a_byte_order_mark(tmp_path, capsys):
    src = folder(tmp_path / "src")
    assert imp("pets", write_csv(src / "list.csv", _csv_rows(src), bom=True), tmp_path, capsys) == 0


def test_import_strips_labels_and_says_when_that_merges_classes(tmp_path, capsys):
    src = folder(tmp_path / "src")
    rows = _csv_rows(src)
    rows[0] = rows[0].replace(",cat,", ", cat,")
    rows[1] = rows[1].replace(",cat,", ",cat ,")
    assert imp("pets", write_csv(src / "list.csv", rows), tmp_path, capsys) == 0
    assert "merging them into cat" in capsys.readouterr().err
    assert load_dataset("pets", tmp_path / "data", build=False).header["imported"]["classes"] == ["cat", "dog"]


def test_import_names_empty_class_folders(tmp_path, capsys):
    src = folder(tmp_path / "src")
    (src / "train" / "owl").mkdir()
    assert imp("pets", src, tmp_path, capsys) == 0
    assert "empty class folder(s) left out: train/owl/" in capsys.readouterr().err


@pytest.mark.parametrize("text,needle", [
    ("path,label\ntrain/cat/0.png,cat\n", "needs the columns"),
    ("path,label,split\ntrain/cat/0.png,cat\n", "fewer fields"),
    ("path,label,split\ntrain/cat/0.png,cat,holdout\n", "split 'holdout'"),
    ("path,label,split,group\ntrain/cat/0.png,cat,train,a\ntrain/dog/0.png,dog,train,b\ntest/cat/0.png,cat,test,\n",
     "for some rows only"),
])
def test_import_refuses_malformed_csvs(text, needle, tmp_path, capsys):
    folder(tmp_path / "src")
    (tmp_path / "src" / "list.csv").write_text(text)
    one_line(capsys, imp("pets", tmp_path / "src" / "list.csv", tmp_path, capsys), needle)


def test_masks_for_some_images_only_are_kept_with_which_images_they_cover(tmp_path, capsys):
    assert imp("pets", folder(tmp_path / "src", masks=("train",)), tmp_path, capsys) == 0
    assert "masks for 6 of 10" in capsys.readouterr().out
    ds = load_dataset("pets", tmp_path / "data", build=False)
    assert ds.train.masked.all() and not ds.test.masked.any()


# ---- the data in every run's identity -------------------------------------------------------------

def test_a_reimported_data_set_trains_in_its_own_folder(tmp_path, capsys):
    data = tmp_path / "data"
    import_dataset("re", folder(tmp_path / "a"), data, size=16, progress=False)
    cfg = TrainConfig(dataset="re", method="vanilla", epochs=1)
    first = run(cfg, runs_dir=tmp_path / "runs", data_dir=data, progress=False)
    assert run(cfg, runs_dir=tmp_path / "runs", data_dir=data, progress=False).run_dir == first.run_dir  # cached
    import_dataset("re", folder(tmp_path / "b", classes=("cat", "dog", "fox"), n=(3, 0, 10)), data, size=16,
                   progress=False, force=True)
    second = run(cfg, runs_dir=tmp_path / "runs", data_dir=data, progress=False)
    assert second.run_dir != first.run_dir and second.test.n == 30 and len(second.classes) == 3
    assert second.data_sha256 != first.data_sha256


# ---- verified weights, a lock that excludes ---------------------------------------------------------

def test_damaged_weights_never_predict(tmp_path, capsys):
    data = tmp_path / "data"
    src = folder(tmp_path / "src")
    import_dataset("pets", src, data, size=16, progress=False)
    record = run(TrainConfig(dataset="pets", method="vanilla", epochs=1), runs_dir=tmp_path / "runs", data_dir=data,
                 progress=False)
    weights = record.run_dir / "model.pt"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
    weights.write_bytes(bytes(blob))
    code = main(["predict", str(record.run_dir), "--images", str(src / "test"), "--out", str(tmp_path / "p.csv")])
    one_line(capsys, code, "model.pt")
    assert not (tmp_path / "p.csv").exists()


def _hold(folder_, n, inside, clash):
    for _ in range(n):
        try:
            with folder_lock(folder_, "a test"):
                with inside.get_lock():
                    inside.value += 1
                    if inside.value > 1:
                        clash.value += 1
                with inside.get_lock():
                    inside.value -= 1
        except L2LError:
            pass


def test_the_lock_excludes_under_contention(tmp_path):
    """Two processes taking and releasing one lock as fast as they can: never both inside."""
    ctx = multiprocessing.get_context("fork")
    inside, clash = ctx.Value("i", 0), ctx.Value("i", 0)
    procs = [ctx.Process(target=_hold, args=(tmp_path, 400, inside, clash)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert clash.value == 0 and all(p.exitcode == 0 for p in procs)


def test_a_lock_without_an_owner_is_never_taken_over_and_a_dead_owner_is(tmp_path):
    (tmp_path / ".lock").write_text("")
    with pytest.raises(L2LError, match="another l2l process"):
        with folder_lock(tmp_path, "a test"):
            pass
    (tmp_path / ".lock").write_text("999999999\n")
    with folder_lock(tmp_path, "a test") as lock:
        assert lock.read_text().split()[0] == str(os.getpid())  # then its host


def _hold_for(folder_, name, ready, seconds):
    with folder_lock(folder_, "an import", name=name):
        ready.set()
        time.sleep(seconds)


def test_two_concurrent_imports_of_one_name_never_both_write(tmp_path, capsys):
    src = folder(tmp_path / "src")
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_for, args=(tmp_path / "data", ".pets.npz.lock", ready, 30))
    other.start()
    try:
        assert ready.wait(20)
        one_line(capsys, imp("pets", src, tmp_path, capsys), "already running")
        assert not (tmp_path / "data" / "pets.npz").exists()
    finally:
        other.terminate()
        other.join()


# ---- reports and records never end in a traceback ---------------------------------------------------

GOOD = {"config": {"dataset": "decoymnist", "method": "vanilla"}, "maps": {}, "selection": {"epoch": 0},
        "test": {"accuracy": 90.0, "n": 10}, "history": [{"epoch": 0, "val_acc": 95.0}], "wall_seconds": 1.0,
        "seconds_per_epoch": 1.0}


@pytest.mark.parametrize("change", [
    lambda r: [r], lambda r: r | {"test": {"accuracy": "high", "n": 10}},
    lambda r: r | {"test": {"accuracy": float("nan"), "n": 10}},
    lambda r: {k: v for k, v in r.items() if k != "config"},
    lambda r: r | {"config": {"epochz": 3}}, lambda r: r | {"selection": {"epoch": "last"}},
    lambda r: r | {"history": "none"}, lambda r: r | {"test": {"accuracy": float("inf"), "n": 10}},
    lambda r: r | {"config": {"dataset": "decoymnist", "lr": "fast"}}, lambda r: r | {"wall_seconds": "long"},
], ids=["a list", "text accuracy", "NaN accuracy", "no config", "unknown key", "text epoch", "no history list",
        "infinite accuracy", "text lr", "text seconds"])
def test_a_malformed_record_is_skipped_with_one_warning_naming_it(change, tmp_path, capsys):
    for name, record in (("good", GOOD), ("bad", change(json.loads(json.dumps(GOOD))))):
        folder_ = tmp_path / "runs" / "decoymnist" / name / "seed0"
        folder_.mkdir(parents=True)
        (folder_ / "result.json").write_text(json.dumps(record))
    code = main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 0 and err.count("warning: skipping") == 1 and "bad/seed0" in err and "Traceback" not in err
    assert "nan" not in (tmp_path / "report" / "report.md").read_text().lower().replace("nanmean", "")


def _sweep_folder(tmp_path, selection):
    folder_ = tmp_path / "sweep" / "decoymnist" / "g" / "seed0"
    folder_.mkdir(parents=True)
    (folder_ / "result.json").write_text(json.dumps(GOOD))
    (tmp_path / "sweep" / "selection.json").write_text(json.dumps(selection))
    return tmp_path / "sweep"


@pytest.mark.parametrize("selection,needle", [
    ({"dataset": "decoymnist", "method": "l2l", "axes": {"lambda0": [1.0]}, "chosen": {"lambda0": 7.0},
      "seeds": [0], "points": [{"point": {"lambda0": 1.0}, "test_acc": [90.0]}], "test_acc_mean": 90.0,
      "test_acc_std": 0.0}, "not one of its grid's points"),
    ({"dataset": "decoymnist"}, "missing or of the wrong type"),
    ([1, 2], "not a mapping"),
])
def test_a_sweep_report_checks_its_inputs_before_writing_anything(selection, needle, tmp_path, capsys):
    code = main(["report", str(_sweep_folder(tmp_path, selection)), "--out", str(tmp_path / "report")])
    one_line(capsys, code, needle)
    assert not (tmp_path / "report").exists()


# ---- grids and config files are sized before they are built ----------------------------------------

@pytest.mark.parametrize("grids,needle", [
    (["phase1=1:3:1"], "takes values, not a range"),
    (["lambda0=1:100000000:1"], "has 100,000,000 values, more than 10,000"),
    (["lambda0=1:100:1", "e_att=1:100:1", "lr=0.001:0.1:0.001"], "more than 10,000"),
    (["lambda0=1:3:0"], "step not above 0"),
    (["lambda0=5:1:1"], "empty range"),
    (["lambda0=1,1"], "repeated values"),
    (["epochs=1,2"], "malformed --grid"),
])
def test_bad_grids_are_one_line_before_anything_is_built(grids, needle, data_dir, tmp_path, capsys):
    t0 = time.perf_counter()
    args = [a for g in grids for a in ("--grid", g)]
    code = main(["sweep", "--dataset", "decoymnist", "--method", "l2l", *args, "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path), "--train-subset", "40", "--epochs", "2", "--e-att", "1", "--quiet"])
    one_line(capsys, code, needle)
    assert time.perf_counter() - t0 < 10


def test_a_lambda_grid_for_a_method_without_a_lambda_is_refused(data_dir, tmp_path, capsys):
    code = main(["sweep", "--dataset", "decoymnist", "--method", "vanilla", "--grid", "lambda0=1,10",
                 "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--train-subset", "40", "--quiet"])
    one_line(capsys, code, "resolve to the same run")


@pytest.mark.parametrize("text,needle", [
    ("a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n", "aliases"),
    ("epochs: 1\n" + "# padding\n" * 120_000, "too large"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("epochs: [1\n", "not valid YAML"),
])
def test_config_files_are_read_with_a_size_cap_and_without_aliases(text, needle, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(text)
    one_line(capsys, main(["train", "--config", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path)]), needle)


@pytest.mark.parametrize("command", ["train", "sweep", "tune"])
def test_a_config_files_wrong_value_is_refused_even_where_a_flag_overrides_it(command, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("epochs: -3\n")
    extra = {"sweep": ["--grid", "lambda0=1,2"], "tune": ["--space", "lambda0=float:1:2", "--trials", "1"]}
    one_line(capsys, main([command, "--config", str(tmp_path / "c.yaml"), "--epochs", "2", "--runs-dir",
                           str(tmp_path), "--data-dir", str(tmp_path / "data"), *extra.get(command, [])]),
             "c.yaml: epochs must be")
    assert not (tmp_path / "data").exists()


# ---- threads, and checks that run after an imported set is known ---------------------------------------

@pytest.mark.parametrize("name", sorted(MAP_SOURCES.names()))
def test_building_a_map_source_leaves_the_thread_count_alone(name, tmp_path, monkeypatch):
    monkeypatch.delenv("L2L_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = {"path": str(png(tmp_path / "m" / "0.png"))} if name == "precomputed" else {}
        options |= {"vlm": "some/clip-not-downloaded-yet"} if "clip" in name or name in ("weclip",) else {}
        try:
            source = MAP_SOURCES.get(name)(**options)
            getattr(source, "torch_device", None)
        except L2LError:
            pass  # a source that cannot be built here still must not touch the threads
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cdep_on_an_imported_set_is_checked_after_the_set_is_known(tmp_path, capsys, monkeypatch):
    import_dataset("pets", folder(tmp_path / "src", masks=("train", "test")), tmp_path / "data", size=16,
                   progress=False)
    monkeypatch.setenv("L2L_VLM", "some/clip")
    code = main(["train", "--dataset", "pets", "--method", "cdep", "--maps", "oracle", "--data-dir",
                 str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), *FAST])
    err = capsys.readouterr().err
    assert "unknown data set" not in err and code == 0, err
