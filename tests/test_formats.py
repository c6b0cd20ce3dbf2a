"""`l2l data import --format waterbirds|redmeat|csv` on format-identical synthetic fixtures."""

import csv

import pytest

from learning_to_look.cli import main
from learning_to_look.data import load_dataset
from learning_to_look.data.imported import dataset_spec

from worst_group_fixtures import make_redmeat, make_waterbirds


@pytest.fixture(scope="module")
def waterbirds_root(tmp_path_factory):
    return make_waterbirds(tmp_path_factory.mktemp("waterbirds"))


def _import(args, data, capsys):
    code = main(["data", "import", *args, "--data-dir", str(data), "--size", "32", "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_waterbirds_groups_are_bird_and_place(waterbirds_root, tmp_path, capsys):
    _import(["wb", "--from", str(waterbirds_root), "--format", "waterbirds"], tmp_path, capsys)
    spec, ds = dataset_spec("wb", tmp_path), load_dataset("wb", tmp_path, build=False)
    assert spec.classes == ("landbird", "waterbird")
    assert spec.group_names == ("landbird-on-land", "landbird-on-water", "waterbird-on-land", "waterbird-on-water")
    with open(waterbirds_root / "metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_name = {r["img_filename"]: r for r in rows}
    train_names = ds.header["files"]["train"]
    for name, y, g in zip(train_names, ds.train.labels, ds.train.groups):
        r = by_name[name]
        assert (y, g) == (int(r["y"]), 2 * int(r["y"]) + int(r["place"]))  # group_DRO's numbering
    is_val = [by_name[n]["split"] == "1" for n in train_names]
    assert spec.has_val and sum(is_val) == sum(r["split"] == "1" for r in rows)
    assert len(ds.test) == sum(r["split"] == "2" for r in rows)


def test_redmeat_keeps_galss_five_classes_and_its_splits(tmp_path, capsys):
    food = make_redmeat(tmp_path / "raw")
    _import(["rm", "--from", str(food), "--format", "redmeat"], tmp_path / "data", capsys)
    spec, ds = dataset_spec("rm", tmp_path / "data"), load_dataset("rm", tmp_path / "data", build=False)
    assert sorted(spec.classes) == sorted(["baby_back_ribs", "filet_mignon", "pork_chop", "prime_rib", "steak"])
    assert not spec.group_names and spec.has_val
    assert len(ds.test) == 5 and len(ds.train) == 25  # per class: 4 train + 1 val, 1 test; apple_pie left out


def test_a_general_csv_through_a_column_map(waterbirds_root, tmp_path, capsys):
    _import(["mapped", "--from", str(waterbirds_root / "metadata.csv"), "--format", "csv", "--columns",
             "path=img_filename,label=y,split=split,group=place", "--split-values", "0=train,1=val,2=test"],
            tmp_path, capsys)
    spec = dataset_spec("mapped", tmp_path)
    assert spec.classes == ("0", "1") and spec.group_names == ("0", "1")
    ds = load_dataset("mapped", tmp_path, build=False)
    with open(waterbirds_root / "metadata.csv") as fh:
        place = {r["img_filename"]: int(r["place"]) for r in csv.DictReader(fh)}
    assert ds.test.groups.tolist() == [place[n] for n in ds.header["files"]["test"]]


@pytest.mark.parametrize("args,needle", [
    (["--format", "waterbirds"], "has none"),
    (["--format", "csv", "--columns", "path=img_filename,label=species,split=split"], "no column 'species'"),
    (["--format", "csv", "--columns", "path=img_filename,label=y"], "must name path, label and split"),
    (["--format", "csv", "--columns", "path=img_filename,label=y,split=split"], "--split-values"),
    (["--columns", "path=img_filename,label=y,split=split"], "add --format csv"),
    (["--format", "redmeat"], "meta/all_images.csv"),
    (["--format", "tiff"], "unknown --format"),
])
def test_bad_format_inputs_are_one_line(args, needle, waterbirds_root, tmp_path, capsys):
    source = waterbirds_root / "metadata.csv" if "csv" in args else tmp_path if "waterbirds" in args else \
        waterbirds_root
    code = main(["data", "import", "x", "--from", str(source), *args, "--data-dir", str(tmp_path / "d"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
