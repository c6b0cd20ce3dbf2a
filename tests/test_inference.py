"""Using a trained run: load_run, predict and explain, in Python and on the command line."""

import csv

import numpy as np
import pytest
from PIL import Image

import learning_to_look
from learning_to_look.cli import main
from learning_to_look.data import synthetic as sb
from learning_to_look.errors import L2LError
from learning_to_look.inference import load_run


@pytest.fixture(scope="module")
def image_folder(shapes, tmp_path_factory):
    """Six shapes-bg test images as PNGs, four at 28 px and two enlarged to 56 px."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(6):
        img = Image.fromarray(shapes.test.images[i].transpose(1, 2, 0))
        (img.resize((56, 56), Image.NEAREST) if i >= 4 else img).save(folder / f"im{i}.png")
    return folder


def test_load_run_reproduces_the_recorded_test_accuracy(shapes_run, shapes):
    trained = learning_to_look.load_run(shapes_run)  # the lazy package attribute
    probs = trained.predict(shapes.test.images)  # (N,K)
    assert probs.shape == (len(shapes.test), len(sb.SHAPES))
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = 100 * float((probs.argmax(1) == shapes.test.labels).mean())
    assert acc == pytest.approx(trained.record.test.accuracy, abs=1e-4)  # one image is 0.04 points
    assert trained.config.dataset == "shapes-bg" and trained.class_names == sb.SHAPES
    assert trained.maps["kind"] == "none"


def test_explain_gives_a_map_per_image_as_the_network_saw_it(shapes_run, shapes):
    trained = load_run(shapes_run)
    big = np.repeat(np.repeat(shapes.test.images[:3], 2, axis=2), 2, axis=3)  # (3,3,56,56)
    probs, cams = trained.explain(big)
    assert trained.prepare(big).shape == (3, 3, 28, 28)  # prepared to the data set's 28 px, as imported
    assert cams.shape == (3, 28, 28) and probs.shape == (3, len(sb.SHAPES))
    assert cams.min() >= 0 and cams.max() <= 1 and (cams.reshape(3, -1).max(1) > 0.75).all()  # peaks near 1


def test_load_run_of_an_unfinished_or_missing_folder_is_one_line(tmp_path):
    with pytest.raises(L2LError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(L2LError, match="has not finished"):
        load_run(tmp_path)


def test_load_run_names_a_group_folder_and_missing_weights(shapes_run, tmp_path):
    group = shapes_run.parent
    with pytest.raises(L2LError, match=f"is a run group, one folder per seed .*e.g. {group / shapes_run.name}"):
        load_run(group)
    copy = tmp_path / "seed0"
    copy.mkdir()
    for f in shapes_run.iterdir():
        if f.is_file() and f.name != "model.pt":
            (copy / f.name).write_bytes(f.read_bytes())
    with pytest.raises(L2LError, match="has its record but no model.pt; delete the run folder"):
        load_run(copy)


def test_cli_predict_writes_a_csv_row_per_image(shapes_run, image_folder, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(shapes_run), "--images", str(image_folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [f"im{i}.png" for i in range(6)]
    for r in rows:
        p = [float(r[f"p_{c}"]) for c in sb.SHAPES]
        assert sum(p) == pytest.approx(1, abs=1e-4) and r["prediction"] == sb.SHAPES[int(np.argmax(p))]
    assert "6 images" in capsys.readouterr().out


def test_cli_explain_writes_an_overlay_per_image(shapes_run, image_folder, tmp_path):
    out = tmp_path / "cams"
    assert main(["explain", str(shapes_run), "--images", str(image_folder), "--out", str(out), "--limit", "2",
                 "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["im0_cam.png", "im1_cam.png"]
    assert Image.open(out / "im0_cam.png").size[0] > 200


@pytest.mark.parametrize("args, words", [
    (["predict", "{missing}", "--images", "{images}"], "does not exist"),
    (["predict", "{run}", "--images", "{missing}"], "no image folder"),
    (["explain", "{run}", "--images", "{images}", "--out", "{file}"], "is a file"),
])
def test_cli_bad_inputs_are_one_line(args, words, shapes_run, image_folder, tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    fill = {"missing": tmp_path / "missing", "images": image_folder, "run": shapes_run, "file": tmp_path / "f.txt"}
    assert main([a.format(**fill) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


# ---- your own data, end to end: non-square files, a frame shortcut, masks for part of the set ----

CLASSES = ("cat", "dog", "fox", "owl")


def _pet(rng, label: int, frame: int, size=(44, 36)) -> tuple[np.ndarray, np.ndarray]:
    """A non-square image: the class's shape in the middle and a coloured 3-px frame (the
    shortcut: class colour in training, random at test), and the shape's mask."""
    w, h = size
    img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    img[:3], img[-3:], img[:, :3], img[:, -3:] = [colours[frame]] * 4
    mask = np.zeros((h, w), np.uint8)
    cy, cx = h // 2, w // 2
    if label == 0:
        mask[cy - 6:cy + 6, cx - 6:cx + 6] = 255
    elif label == 1:
        mask[cy - 8:cy + 8, cx - 2:cx + 2] = 255
    elif label == 2:
        mask[cy - 2:cy + 2, cx - 8:cx + 8] = 255
    else:
        mask[cy - 6:cy + 6, cx - 6:cx + 6] = 255
        mask[cy - 3:cy + 3, cx - 3:cx + 3] = 0
    img[mask > 0] = 220
    return img, mask


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """An import of 4 classes with a frame shortcut, masks for the training images only."""
    from learning_to_look.data.imported import import_dataset

    root = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for i in range(n * len(CLASSES)):
            label = i % len(CLASSES)
            frame = label if split == "train" and rng.random() < 0.95 else int(rng.integers(len(CLASSES)))
            img, mask = _pet(rng, label, frame)
            path = root / "src" / split / CLASSES[label] / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            if split == "train":
                (root / "src" / "masks" / split / CLASSES[label]).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "src" / "masks" / split / CLASSES[label] / f"{i}.png")
    import_dataset("pets", root / "src", root / "data", size=32, progress=False)
    return root


def test_own_data_end_to_end_predict_on_the_original_files_reproduces_the_test_accuracy(pets, capsys):
    runs, data = pets / "runs", pets / "data"
    for method in ("vanilla", "l2l"):
        assert main(["train", "--dataset", "pets", "--method", method, "--maps", "oracle", "--epochs", "4",
                     "--e-att", "2", "--data-dir", str(data), "--runs-dir", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "runs in" in out
    run_dir = next((runs / "pets").glob("l2l-*/seed37"))
    trained = load_run(run_dir)
    assert trained.record.raw["maps"]["images_with_maps"] == trained.record.dataset["n_train"] == 134  # all masked
    assert trained.record.test.masked_images == 0 and trained.record.test.cam_on_digit is None  # test: no masks
    assert main(["predict", str(run_dir), "--images", str(pets / "src" / "test"), "--out", str(pets / "p.csv"),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("accuracy ")[1].split(" %")[0])
    assert accuracy == pytest.approx(trained.record.test.accuracy, abs=0.1)  # the files, prepared as imported
    assert "per class: cat" in printed and "confusion" in printed
    assert main(["explain", str(run_dir), "--images", str(pets / "src" / "test"), "--out", str(pets / "cams"),
                 "--class", "true", "--limit", "2", "--quiet"]) == 0
    assert main(["report", str(runs), "--out", str(pets / "report")]) == 0
    report = (pets / "report" / "report.md").read_text()
    assert "cat" in report and "ColorMNIST" not in report
