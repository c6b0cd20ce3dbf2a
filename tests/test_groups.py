"""shapes-bg (a synthetic spurious-background set), group metrics and worst-group selection."""

import numpy as np
import pytest
import torch

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import DIGIT_THRESHOLD
from learning_to_look.data import synthetic as sb
from learning_to_look.errors import L2LError
from learning_to_look.training.evaluate import group_accuracy
from learning_to_look.methods import METHODS
from learning_to_look.training.resolve import resolve
from learning_to_look.nn.backbones import BACKBONES
from learning_to_look.io import read_json
from learning_to_look.training.selection import selection_score


def test_shapes_bg_is_reproducible_byte_for_byte(shapes):
    again = sb.build_shapes_bg()
    for s, split in (("train", shapes.train), ("test", shapes.test)):
        assert np.array_equal(again[f"x_{s}"], split.images)
        assert np.array_equal(again[f"group_{s}"], split.groups)


def test_test_split_is_balanced_over_every_group(shapes):
    counts = np.bincount(shapes.test.groups, minlength=len(sb.GROUP_NAMES))
    assert (counts == sb.N_TEST // len(sb.GROUP_NAMES)).all()


def test_training_texture_is_the_shapes_own_for_the_majority(shapes):
    tr = shapes.train
    assert np.array_equal(tr.groups // sb.N_TEXTURES, tr.labels)  # group = shape * N_TEXTURES + texture
    own = (tr.groups % sb.N_TEXTURES) == tr.labels % sb.N_TEXTURES
    assert abs(own.mean() - sb.MAJORITY) < 0.01
    minority = np.bincount(tr.groups[~own], minlength=len(sb.GROUP_NAMES))
    assert (minority[[g for g in range(16) if g // 4 != g % 4]] > 20).all()  # every minority group is there


def test_object_image_marks_exactly_the_bright_shape(shapes):
    x, obj = shapes.train.images[:500], shapes.train.digits[:500]
    inside = obj > DIGIT_THRESHOLD  # (N,28,28)
    peak = x.max(axis=1)  # (N,28,28) brightest channel
    assert np.array_equal(peak[inside], obj[inside])  # the shape's pixels carry its colour
    assert peak[~inside].max() < sb.TEXTURE_VALUE[1]  # the texture is darker than any shape
    assert peak[inside].min() >= sb.SHAPE_VALUE[0] - 1


def test_shape_masks_match_a_hand_drawn_plus():
    m = sb.shape_masks(np.array([3]), np.array([5]), np.array([5]), np.array([3]))[0]
    # half-side 3: bars 7 long and 3 wide (|d| <= 3 / 3), crossing in a 3x3 centre: 21 + 21 - 9 pixels
    assert m[4:7, 2:9].all() and m[2:9, 4:7].all() and m.sum() == 33
    assert not m[3, 3] and not m[1, 5]


def test_group_accuracy_by_hand():
    correct = torch.tensor([True, False, True, True, False])
    groups = torch.tensor([0, 0, 1, 2, 2])
    g = group_accuracy(correct, groups)
    assert g["group_accuracy"] == {"0": 50.0, "1": 100.0, "2": 50.0}
    assert g["worst_group_accuracy"] == 50.0
    assert g["mean_group_accuracy"] == pytest.approx(200 / 3)


def test_worst_group_selection_reads_the_worst_group():
    metrics = {"val_acc": 90.0, "val_worst_group_accuracy": 40.0}
    assert selection_score("val_worst_group", metrics, 1.0) == pytest.approx(0.4)
    with pytest.raises(L2LError, match="group labels"):
        selection_score("val_worst_group", {"val_acc": 90.0}, 1.0)


def test_worst_group_selection_on_a_set_without_groups_is_one_line(capsys):
    assert main(["train", "--dataset", "mnist", "--method", "vanilla", "--selection", "val_worst_group"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shapes-bg" in err and "--selection val_acc" in err


def test_a_target_empty_for_every_image_is_refused_before_training():
    method = METHODS.get("l2l")(resolve(TrainConfig(dataset="shapes-bg", method="l2l", maps="intensity")))
    with pytest.raises(L2LError, match="--target filled"):
        method.aux(torch.ones(3, 28, 28), BACKBONES.get("lenet-gap"))  # a map covering everything has no outline
    rrr = METHODS.get("rrr")(resolve(TrainConfig(dataset="decoymnist", method="rrr", maps="not-decoy")))
    assert rrr.aux(torch.ones(3, 28, 28), BACKBONES.get("lenet-gap"))["irrelevant"].sum() == 0  # only a diagnostic


def test_a_run_on_shapes_bg_records_group_metrics_and_worst_group_selection(shapes_run):
    r = read_json(shapes_run / "result.json")
    t = r["test"]
    assert len(t["group_accuracy"]) == len(sb.GROUP_NAMES)
    assert t["worst_group_accuracy"] == min(t["group_accuracy"].values())
    assert r["selection"]["rule"] == "val_worst_group"
    assert "val_worst_group_accuracy" in r["selection"]["val"]
    assert r["selection"]["score"] == pytest.approx(r["selection"]["val"]["val_worst_group_accuracy"] / 100)
