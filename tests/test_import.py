"""`l2l data import`: image folders and CSVs as verified data sets that train, predict and explain."""

import csv

import numpy as np
import pytest
from PIL import Image

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import load_dataset, train_val
from learning_to_look.data.builders import irrelevant_component
from learning_to_look.data.imported import dataset_spec, import_dataset
from learning_to_look.errors import L2LError
from learning_to_look.training.run import run

CLASSES = ("cat", "dog")


def _image(path, value, size=(30, 20), mask=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[5:15, 10:20] = value  # a bright square: the object
    Image.fromarray(a[..., 0] if mask else a).save(path)


def make_folder(root, n=(6, 2, 3), masks=True):
    """root/{train,val,test}/{cat,dog}/*.png (+ masks/), n images per class and split."""
    for split, k in zip(("train", "val", "test"), n):
        for c, cls in enumerate(CLASSES):
            for i in range(k):
                _image(root / split / cls / f"{i}.png", 100 + 100 * c)
                if masks:
                    _image(root / "masks" / split / cls / f"{i}.png", 255, mask=True)
    return root


def test_folder_import_keeps_classes_names_val_and_masks(tmp_path):
    src = make_folder(tmp_path / "src")
    path, skipped, _ = import_dataset("pets", src, tmp_path / "data", size=24, progress=False)
    ds = load_dataset("pets", tmp_path / "data", build=False)
    assert skipped == 0 and path.name == "pets.npz"
    assert ds.train.images.shape == (16, 3, 24, 24) and ds.test.images.shape == (6, 3, 24, 24)
    assert ds.header["imported"]["classes"] == list(CLASSES)
    assert ds.train.names[0] == "train/cat/0.png" and ds.test.names[-1] == "test/dog/2.png"
    tr, va = train_val(ds)
    assert len(tr) == 12 and len(va) == 4 and all(n.startswith("val/") for n in va.names)
    assert ds.train.digits is not None and set(np.unique(ds.train.digits)) == {0, 255}
    assert (ds.test.images[ds.test.labels == 1].max() == 200) and (ds.test.images[ds.test.labels == 0].max() == 100)


def test_bad_files_are_listed_in_one_line_or_skipped(tmp_path, capsys):
    src = make_folder(tmp_path / "src", masks=False)
    (src / "train" / "cat" / "empty.png").write_bytes(b"")
    (src / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (src / "test" / "dog" / "notes.txt").write_text("hello")
    args = ["data", "import", "pets", "--from", str(src), "--size", "16", "--data-dir", str(tmp_path / "d"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "3 bad file(s)" in err and "train/cat/empty.png (empty file)" in err
    assert "--skip-bad" in err and not (tmp_path / "d" / "pets.npz").exists()
    assert main([*args, "--skip-bad"]) == 0
    assert "skipped 3 bad file(s)" in capsys.readouterr().out


def test_csv_import_with_groups(tmp_path):
    rows = []
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            name = f"img/{split}{i}.png"
            _image(tmp_path / name, 50 + i)
            rows.append({"path": name, "label": CLASSES[i % 2], "split": split, "group": f"bg{i // 2 % 2}"})
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label", "split", "group"])
        w.writeheader()
        w.writerows(rows)
    import_dataset("grouped", tmp_path / "list.csv", tmp_path / "data", size=16, progress=False)
    ds = load_dataset("grouped", tmp_path / "data", build=False)
    assert ds.header["imported"]["groups"] == ["bg0", "bg1"]
    assert list(ds.test.groups) == [0, 0, 1, 1] and ds.test.digits is None


@pytest.mark.parametrize("setup, words", [
    (lambda p: (p / "src" / "test" / "bird").mkdir(parents=True) or _image(p / "src/test/bird/x.png", 9),
     "class 'bird' appears in val/test but not in train"),
    (lambda p: None, "already exists"),
])
def test_import_refusals(tmp_path, setup, words):
    make_folder(tmp_path / "src", masks=False)
    if words == "already exists":
        import_dataset("pets", tmp_path / "src", tmp_path / "data", size=16, progress=False)
    setup(tmp_path)
    with pytest.raises(L2LError, match=words):
        import_dataset("pets", tmp_path / "src", tmp_path / "data", size=16, progress=False)


def test_a_built_name_cannot_be_taken(tmp_path):
    with pytest.raises(L2LError, match="the name of a built data set"):
        import_dataset("mnist", make_folder(tmp_path / "src"), tmp_path / "data", progress=False)


def test_an_imported_set_trains_with_oracle_maps_and_predicts(tmp_path, capsys):
    src = make_folder(tmp_path / "src", n=(10, 4, 4))
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert main(["data", "import", "pets40", "--from", str(src), "--size", "40", "--data-dir", str(data),
                 "--quiet"]) == 0
    r = run(TrainConfig(dataset="pets40", method="l2l", maps="oracle", epochs=2, e_att=1), runs_dir=runs,
            data_dir=data, progress=False)
    assert r["dataset"]["classes"] == list(CLASSES) and r["maps"]["quality"]["iou"] == pytest.approx(1.0)
    assert 0 <= r["test"]["cam_on_digit"] <= 1 and r["dataset"]["n_val"] == 8
    (run_dir,) = runs.rglob("result.json")
    assert main(["predict", str(run_dir.parent), "--images", str(src / "test"), "--out", str(tmp_path / "p.csv")]) == 0
    assert "8 images" in capsys.readouterr().out


def test_an_import_without_masks_refuses_oracle_maps_in_one_line(tmp_path):
    import_dataset("nomask", make_folder(tmp_path / "src", masks=False), tmp_path / "data", size=16, progress=False)
    with pytest.raises(L2LError, match="object mask"):
        run(TrainConfig(dataset="nomask", method="l2l", maps="oracle", epochs=2, e_att=1), runs_dir=tmp_path / "r",
            data_dir=tmp_path / "data", progress=False)


def test_a_grey_import_saved_as_rgb_refuses_colour_as_its_irrelevant_component(tmp_path, capsys):
    """Grey files stored as RGB have no colour to randomise: `ce --irrelevant colour` would
    train on colours the data never shows, so it is refused like a grey built set."""
    src = make_folder(tmp_path / "src", masks=True)
    import_dataset("greys", src, tmp_path / "data", size=16, progress=False)
    assert load_dataset("greys", tmp_path / "data", build=False).header["imported"]["grey"] is True
    code = main(["train", "--dataset", "greys", "--method", "ce", "--irrelevant", "colour", "--maps", "oracle",
                 "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"), "--epochs", "1",
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "greys is grey" in err and "\n" not in err
    _image(src / "train" / "cat" / "0.png", (200, 40, 40))  # one reddish image: now the set has colour
    import_dataset("tinted", src, tmp_path / "data", size=16, progress=False)
    spec = dataset_spec("tinted", tmp_path / "data")
    assert not spec.grey and irrelevant_component(spec, "colour") == "colour"
