"""Own-data options: the input size follows the images, augmentation moves maps with the
image, and per-epoch scalars go to TensorBoard."""

import math

import pytest
import torch

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data.augment import affine, augment, jitter, parse_augment, warp
from learning_to_look.data.imported import import_dataset
from learning_to_look.errors import L2LError
from learning_to_look.nn.backbones import backbone_class
from learning_to_look.training.run import run

from test_import import make_folder


@pytest.fixture(scope="module")
def pets48(tmp_path_factory):
    """A two-class import at 48 px with masks."""
    root = tmp_path_factory.mktemp("pets48")
    import_dataset("pets48", make_folder(root / "src", n=(8, 2, 4)), root / "data", size=48, progress=False)
    return root


def _run(root, **kw):
    cfg = TrainConfig(dataset="pets48", method="l2l", maps="oracle", epochs=2, e_att=1) if not kw.get("method") \
        else TrainConfig(dataset="pets48", epochs=2, e_att=1)
    kw = {"method": "l2l", **kw}
    return run(TrainConfig(**{**cfg.to_dict(), **kw}), runs_dir=root / "runs", data_dir=root / "data",
               progress=False)


def test_a_gap_backbone_trains_at_the_imported_size_and_its_cam_follows(pets48):
    r = _run(pets48)
    assert r["config"]["network_size"] == 48 and r["dataset"]["network_size"] == 48 and r["dataset"]["resize"] is None
    assert backbone_class("lenet-gap", 48).feature_size == (48 - 4) // 2 - 4 == 18  # by hand: conv5, pool2, conv5
    assert backbone_class("resnet18", 48).feature_size == 2  # 48 -> 24 -> 12 -> 6 -> 3 -> 2


def test_a_fixed_size_backbone_resizes_and_says_so(pets48, caplog):
    with caplog.at_level("INFO"):
        r = _run(pets48, method="vanilla", backbone="cdep-cnn", schedule="adam")
    assert r["dataset"]["network_size"] == 28 and r["config"]["network_size"] is None
    assert "images are 48 px and cdep-cnn takes 28 px" in r["dataset"]["resize"]
    assert r["dataset"]["resize"] in caplog.text


@pytest.mark.parametrize("args, words", [
    (["--backbone", "cdep-cnn", "--network-size", "64", "--method", "vanilla"], "takes 28 px inputs only"),
    # by hand: (16 - 4) // 2 - 4 = 2, the least side the head's 2x2 pool takes
    (["--network-size", "10", "--method", "vanilla"], "at least 16 px"),
    (["--augment", "flip,spin", "--method", "vanilla"], "unknown augmentation spin"),
])
def test_bad_size_and_augment_are_one_line(pets48, args, words, capsys):
    code = main(["train", "--dataset", "pets48", "--epochs", "1", "--data-dir", str(pets48 / "data"),
                 "--runs-dir", str(pets48 / "bad"), *args])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_augment_is_refused_on_a_built_in_benchmark():
    from learning_to_look.training.resolve import resolve_run
    with pytest.raises(L2LError, match="--augment is for imported data sets"):
        resolve_run(TrainConfig(dataset="colormnist", method="vanilla", augment="flip"))


def test_parse_augment_orders_and_checks():
    assert parse_augment("none") == () and parse_augment("jitter, flip") == ("flip", "jitter")
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_augment("rotate")


def test_flip_mirrors_the_image_and_its_target_together():
    x = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).view(2, 1, 2, 4)  # (B,C,H,W)
    target = torch.zeros(2, 2, 4)
    target[:, 0, 0] = 1.0  # all mass top-left
    theta = torch.tensor([[[-1.0, 0, 0], [0, 1, 0]], [[1.0, 0, 0], [0, 1, 0]]])  # image 0 flipped, image 1 kept
    assert torch.allclose(warp(x, theta)[0], x[0].flip(-1)) and torch.allclose(warp(x, theta)[1], x[1])
    moved = warp(target, theta)  # (B,H,W)
    assert moved[0, 0, 3] == 1.0 and moved[1, 0, 0] == 1.0


def test_crop_keeps_a_target_a_distribution_and_stays_inside_the_image():
    g = torch.Generator().manual_seed(0)
    theta = affine(64, flip=False, crop=True, gen=g)  # (64,2,3)
    sx, sy, cx, cy = theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    area = sx * sy
    assert bool((area >= 0.25 - 1e-6).all() and (area <= 1 + 1e-6).all())
    assert bool(((cx.abs() + sx) <= 1 + 1e-6).all() and ((cy.abs() + sy) <= 1 + 1e-6).all())
    target = torch.softmax(torch.randn(64, 5, 5).flatten(1), 1).view(64, 5, 5)
    mask = (torch.rand(64, 1, 8, 8) > 0.5).float()
    x, aux = augment(torch.rand(64, 3, 8, 8) * 2 - 1, {"target": target, "mask": mask, "w": torch.ones(64)},
                     ("crop",), g)
    assert torch.allclose(aux["target"].flatten(1).sum(1), torch.ones(64), atol=1e-5)
    assert aux["mask"].shape == mask.shape and torch.equal(aux["w"], torch.ones(64))


def test_jitter_stays_in_range_and_is_identity_at_factor_one(monkeypatch):
    x = torch.rand(4, 3, 6, 6) * 2 - 1
    out = jitter(x, torch.Generator().manual_seed(1))
    assert out.min() >= -1 and out.max() <= 1 and not torch.allclose(out, x)
    monkeypatch.setattr("learning_to_look.data.augment.JITTER", 0.0)
    assert torch.allclose(jitter(x, torch.Generator().manual_seed(1)), x, atol=1e-6)


def test_an_augmented_run_records_its_augmentation_and_trains(pets48):
    r = _run(pets48, augment="flip,crop,jitter")
    assert r["config"]["augment"] == "flip,crop,jitter" and math.isfinite(r["test"]["accuracy"])


def test_tensorboard_gets_the_per_epoch_scalars(pets48):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _run(pets48, method="vanilla", log="tensorboard")
    (events,) = (pets48 / "runs").rglob("events.out.tfevents*")
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"val/acc", "train/acc"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("val/acc")] == [0, 1]


def test_the_log_flag_does_not_change_a_runs_identity():
    a, b = TrainConfig(log="tensorboard"), TrainConfig()
    assert a.fingerprint() == b.fingerprint() and a.matches(b.to_dict())


def test_a_pooled_outline_keeps_a_thin_band_that_nearest_sampling_misses():
    from learning_to_look.nn.losses import outline_target
    mask = torch.zeros(1, 40, 40)
    mask[0, 10:30, 10:30] = 1.0
    kw = {"threshold": 0.5, "dilate": 1, "gradient": 3, "upsample": 40, "gain": 1.0, "size": 5}
    # by hand: the 3x3 gradient leaves a band on rows/cols 9-10 and 29-30; nearest sampling of 40 -> 5 reads
    # pixels 4, 12, 20, 28, 36, which miss it, while max pooling over 8x8 cells keeps the ring of 8 cells
    # around the centre one (cells 1-3 of each axis hold band pixels, cell 2 of both only the inside)
    assert float(outline_target(mask, **kw).sum()) == 0.0
    pooled = outline_target(mask, pool=True, **kw)
    assert float(pooled.sum()) == pytest.approx(1.0) and int((pooled[0] > 0).sum()) == 8 and pooled[0, 2, 2] == 0


def test_a_sweep_finds_an_imported_set_through_data_dir_and_names_the_size_it_cannot_stack(tmp_path, capsys):
    import_dataset("small16", make_folder(tmp_path / "src", n=(4, 2, 2)), tmp_path / "d16", size=16, progress=False)
    code = main(["sweep", "--dataset", "small16", "--method", "vanilla", "--grid", "lr=0.001,0.01", "--epochs", "1",
                 "--data-dir", str(tmp_path / "d16"), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and "stacked training takes lenet-gap's own 32 px inputs" in err


def test_a_damaged_import_is_one_line_naming_the_import_to_redo(tmp_path, capsys):
    path, _, _ = import_dataset("dmg", make_folder(tmp_path / "src", n=(4, 2, 2)), tmp_path / "d", size=16,
                                progress=False)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 256] = bytes(256)
    path.write_bytes(bytes(data))
    code = main(["train", "--dataset", "dmg", "--method", "vanilla", "--epochs", "1", "--data-dir", str(tmp_path / "d"),
                 "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "l2l data import dmg" in err


def test_the_train_line_speaks_of_the_imported_sets_object(pets48, capsys):
    assert main(["train", "--dataset", "pets48", "--method", "vanilla", "--epochs", "1", "--quiet",
                 "--data-dir", str(pets48 / "data"), "--runs-dir", str(pets48 / "line")]) == 0
    out = capsys.readouterr().out
    assert "CAM on object" in out and "digit" not in out
