"""The worst-group baselines, each against a hand computation, and their runs end to end on shapes-bg."""

import math

import pytest
import torch

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.io import read_json
from learning_to_look.methods.groupdro import balanced_rows, dro_step, group_means
from learning_to_look.methods.jtt import upsampled_rows
from learning_to_look.methods.upweight import inverse_frequency, weighted_ce
from learning_to_look.nn.linear import afr_loss, afr_weights, fold_scaling, l1_logistic, standardise
from learning_to_look.training.evaluate import balanced_accuracy, class_metrics, group_accuracy, group_shares
from learning_to_look.training.run import run, run_dir_for
from learning_to_look.training.resolve import resolve
from learning_to_look.training.selection import selection_score


def test_inverse_frequency_weights_the_rarest_one():
    assert inverse_frequency(torch.tensor([0, 0, 0, 1]), 3).tolist() == pytest.approx([1 / 3, 1.0, 0.0])


def test_weighted_cross_entropy_by_hand():
    logits, y, w = torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([1.0, 3.0])
    assert float(weighted_ce(logits, y, w, normalised=True)) == pytest.approx(math.log(2))  # (1 + 3) ln2 / 4
    assert float(weighted_ce(logits, y, w, normalised=False)) == pytest.approx(2 * math.log(2))  # (1 + 3) ln2 / 2


def test_group_dro_step_by_hand():
    means, counts = group_means(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([0, 0, 1]), 3)
    assert means.tolist() == [2.0, 2.0, 0.0] and counts.tolist() == [2.0, 1.0, 0.0]
    loss, q = dro_step(torch.full((3,), 1 / 3), means, 0.5)
    e = math.e
    assert q.tolist() == pytest.approx([e / (2 * e + 1), e / (2 * e + 1), 1 / (2 * e + 1)])
    assert float(loss) == pytest.approx(4 * e / (2 * e + 1))


def test_group_balanced_sampler_draws_each_group_equally_often():
    groups = torch.tensor([0] * 90 + [1] * 10)
    drawn = torch.cat([balanced_rows(groups, torch.Generator().manual_seed(s)) for s in range(50)])
    assert abs(float((groups[drawn] == 1).float().mean()) - 0.5) < 0.03  # 10 % of rows, half the draws


def test_jtt_repeats_each_error_lambda_up_more_times():
    assert upsampled_rows(3, torch.tensor([2]), 2).tolist() == [0, 1, 2, 2, 2]


def test_l1_logistic_regression_by_hand():
    # Two points x = +-1, labels +-1: ||w|| + |b| + C * 2 log(1 + e^-w) has w = ln(2C - 1), b = 0 for C > 1.
    x, s = torch.tensor([[1.0], [-1.0]]), torch.tensor([1.0, -1.0])
    w, b = l1_logistic(x, s, 2.0)
    assert float(w[0]) == pytest.approx(math.log(3), abs=1e-4) and float(b) == pytest.approx(0, abs=1e-6)
    w, b = l1_logistic(x, s, 0.4)  # the penalty wins below C = 1
    assert float(w[0]) == 0.0 and float(b) == 0.0


def test_folding_the_scaler_into_the_head_changes_no_logit():
    x = torch.randn(6, 3, dtype=torch.float64) * 4 + 2
    mean, std = standardise(x)
    w, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    w_raw, b_raw = fold_scaling(w, b, mean, std)
    assert torch.allclose(x @ w_raw.T + b_raw, ((x - mean) / std) @ w.T + b)


def test_afr_weights_and_loss_by_hand():
    logits, y = torch.zeros(3, 2), torch.tensor([0, 0, 1])  # p_true = 1/2 everywhere: only the class counts differ
    assert afr_weights(logits, y, 14.0).tolist() == pytest.approx([0.25, 0.25, 0.5])
    weight, bias = torch.ones(2, 1), torch.zeros(2)
    loss = afr_loss(logits, y, torch.tensor([0.25, 0.25, 0.5]), weight, bias, torch.zeros(2, 1), torch.zeros(2), 0.2)
    assert float(loss) == pytest.approx(math.log(2) + 0.2 * 2)


def test_group_summaries_each_by_its_convention():
    correct, groups = torch.tensor([True, False, True, True]), torch.tensor([0, 0, 1, 1])
    g = group_accuracy(correct, groups, {0: 0.75, 1: 0.25})
    assert (g["worst_group_accuracy"], g["mean_group_accuracy"]) == (50.0, 75.0)
    assert g["weighted_group_accuracy"] == pytest.approx(62.5)  # 0.75 * 50 + 0.25 * 100
    assert group_shares(torch.tensor([0, 0, 0, 1])) == {0: 0.75, 1: 0.25}


def test_balanced_accuracy_and_confusion_by_hand():
    y, pred = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    m = class_metrics(y, pred, ("cat", "dog"))
    assert m["balanced_accuracy"] == pytest.approx(75.0) and m["class_accuracy"] == {"cat": 50.0, "dog": 100.0}
    assert m["confusion"] == [[1, 1], [0, 1]]
    assert balanced_accuracy(y == pred, y) == pytest.approx(75.0)
    assert selection_score("val_balanced", {"val_acc": 66.7, "val_balanced_accuracy": 75.0}, 1.0) == 0.75


@pytest.mark.parametrize("method,extra", [("upweight", {"upweight_by": "group"}), ("groupdro", {}),
                                          ("jtt", {"jtt_epochs": 1, "jtt_upweight": 2.0}), ("dfr", {}),
                                          ("afr", {})])
def test_each_method_trains_and_records_every_summary(method, extra, shapes_dir, tmp_path):
    cfg = TrainConfig(dataset="shapes-bg", method=method, epochs=2, train_subset=200, **extra)
    run(cfg, runs_dir=tmp_path, data_dir=shapes_dir, progress=False)
    r = read_json(run_dir_for(resolve(cfg, shapes_dir), tmp_path) / "result.json")
    t = r["test"]
    for key in ("worst_group_accuracy", "mean_group_accuracy", "weighted_group_accuracy", "balanced_accuracy"):
        assert 0 <= t[key] <= 100
    assert len(t["confusion"]) == 4 and sum(map(sum, t["confusion"])) == t["n"]
    if method in ("dfr", "afr"):
        assert r["last_layer"]["method"] == method
    if method == "jtt":
        assert [h["eligible"] for h in r["history"]] == [False, True]  # only the second stage is selected from
    assert "val_balanced_accuracy" in r["selection"]["val"]


class Killed(Exception):
    pass


@pytest.mark.parametrize("method,extra", [("groupdro", {}), ("jtt", {"jtt_epochs": 1, "jtt_upweight": 2.0})])
def test_a_killed_run_resumes_with_the_methods_state(method, extra, shapes_dir, tmp_path):
    """Killed after epoch 1 and resumed: the same weights as one uninterrupted run (group
    weights q, JTT's error set and its restart are all in the checkpoint)."""
    from learning_to_look.training.engine import fit
    from learning_to_look.training.resolve import resolve_run
    from learning_to_look.training.run import prepare

    cfg = TrainConfig(dataset="shapes-bg", method=method, epochs=3, train_subset=120, **extra)
    prep = prepare(resolve_run(cfg, shapes_dir), shapes_dir, progress=False)
    whole = fit(resolve_run(cfg, shapes_dir), prep.train, prep.val, progress=False)

    def kill(row):
        if row["epoch"] == 1:
            raise Killed

    ckpt = tmp_path / "c.pt"
    with pytest.raises(Killed):
        fit(resolve_run(cfg, shapes_dir), prep.train, prep.val, progress=False, checkpoint=ckpt, on_epoch=kill)
    resumed = fit(resolve_run(cfg, shapes_dir), prep.train, prep.val, progress=False, checkpoint=ckpt)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.parametrize("args,needle", [
    (["--method", "groupdro", "--dataset", "mnist"], "needs group labels"),
    (["--method", "dfr", "--dataset", "mnist"], "needs group labels"),
    (["--method", "upweight", "--upweight-by", "group", "--dataset", "mnist"], "needs group labels"),
    (["--method", "vanilla", "--dataset", "mnist", "--selection", "val_worst_group"], "group labels"),
    (["--method", "vanilla", "--dataset", "shapes-bg", "--dro-eta", "0.1"], "is an option of method groupdro"),
    (["--method", "jtt", "--dataset", "shapes-bg", "--epochs", "3", "--jtt-epochs", "3"], "second stage"),
    (["--method", "vanilla", "--dataset", "shapes-bg", "--freeze-until", "layer3"], "no stages"),
    (["--method", "rrr", "--dataset", "shapes-bg", "--backbone", "resnet18", "--freeze-until", "layer3"],
     "pixels"),
    (["--method", "dfr", "--dataset", "shapes-bg", "--backbone", "cdep-cnn"], "linear head"),
])
def test_bad_inputs_are_one_line(args, needle, capsys):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
