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


def test_explain_gives_a_map_per_image_at_its_own_size(shapes_run, shapes):
    trained = load_run(shapes_run)
    big = np.repeat(np.repeat(shapes.test.images[:3], 2, axis=2), 2, axis=3)  # (3,3,56,56)
    probs, cams = trained.explain(big)
    assert cams.shape == (3, 56, 56) and probs.shape == (3, len(sb.SHAPES))
    assert cams.min() >= 0 and cams.max() <= 1 and np.isclose(cams.reshape(3, -1).max(1), 1, atol=0.05).all()


def test_load_run_of_an_unfinished_or_missing_folder_is_one_line(tmp_path):
    with pytest.raises(L2LError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(L2LError, match="has not finished"):
        load_run(tmp_path)


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
