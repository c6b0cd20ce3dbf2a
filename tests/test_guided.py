"""The language-guided and XIL baselines (gals, energy, hint, ce): each loss against a hand
computation, the counterexamples of every irrelevant component, "what is irrelevant" and
its bad inputs, a tiny run of each method, and the guided profile's plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import DATASETS, irrelevant_component
from learning_to_look.data.imported import import_dataset
from learning_to_look.errors import L2LError
from learning_to_look.methods import METHODS, Batch
from learning_to_look.nn.counterexamples import blend, counterexample, recoloured, shuffled
from learning_to_look.nn.guidance import energy_loss, gals_keep, gals_penalty, hint_loss
from learning_to_look.analysis.records import aggregate
from learning_to_look.analysis.verdicts import verdict_rows
from learning_to_look.record import MapsInfo, Record, TestMetrics, write_record
from learning_to_look.training import reproduce as rep
from learning_to_look.training import run as train_mod
from learning_to_look.training.resolve import resolve_run
from learning_to_look.training.run import run, run_dir_for

NEW = ("gals", "energy", "hint", "ce")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the losses by hand ---------------------------------------------------------------

def test_gals_map_is_shifted_by_its_minimum_and_divided_by_its_maximum():
    maps = torch.tensor([[[0.2, 0.6], [0.4, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    keep = gals_keep(maps, 2)
    assert keep.shape == (2, 1, 2, 2)
    assert torch.allclose(keep[0, 0], torch.tensor([[0.0, 0.4], [0.2, 0.8]]))  # (m - 0.2) / 1.0, not / 0.8
    assert torch.equal(keep[1], torch.zeros(1, 2, 2))  # an empty map: its maximum counts as 1


def test_gals_penalty_is_the_l1_mean_outside_the_map_over_images_with_a_map():
    grads = torch.tensor([[[[1.0, -2.0]]], [[[5.0, 5.0]]]])  # (2,1,1,2)
    keep = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    # image 0: |1 * 0| and |-2 * 1| -> mean 1; image 1 has no map: left out, not counted
    assert gals_penalty(grads, keep, torch.tensor([True, False])).item() == pytest.approx(1.0)
    # both: (0 + 2 + 5 + 5) / 4
    assert gals_penalty(grads, keep, torch.tensor([True, True])).item() == pytest.approx(3.0)
    assert gals_penalty(grads, keep, torch.tensor([False, False])).item() == 0.0


def test_energy_is_one_minus_the_positive_share_inside_summed_over_images():
    attr = torch.tensor([[[2.0, -1.0, 1.0]], [[-1.0, 0.0, 0.0]]])  # (2,1,3)
    masks = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]])
    # image 0: positive 2, 0, 1; inside 2 of 3 -> 1/3. image 1: no positive attribution -> 1 - 0
    both = energy_loss(attr, masks, torch.tensor([True, True]))
    assert both.item() == pytest.approx(1 / 3 + 1)
    assert energy_loss(attr, masks, torch.tensor([True, False])).item() == pytest.approx(1 / 3)
    soft = energy_loss(attr, torch.tensor([[[0.5, 0.0, 1.0]], [[0.0, 0.0, 0.0]]]), torch.tensor([True, False]))
    assert soft.item() == pytest.approx(1 - (0.5 * 2 + 1) / 3)  # a soft map weighs each pixel


def test_hint_sums_the_hinge_over_the_pairs_humans_rank_and_skips_ties():
    g = torch.tensor([[[1.0, 3.0, 2.0]], [[0.0, 5.0, 1.0]]])  # (2,1,3) network importance
    h = torch.tensor([[[1.0, 0.0, 0.5]], [[1.0, 1.0, 0.0]]])  # human importance
    # image 0: pairs (0>1): max(0, 3-1)=2, (0>2): max(0, 2-1)=1, (2>1): max(0, 3-2)=1 -> 4
    # image 1: (0>2): max(0, 1-0)=1, (1>2): max(0, 1-5)=0; (0, 1) tie, not a pair -> 1
    assert hint_loss(g, h).item() == pytest.approx((4 + 1) / 2)
    assert hint_loss(torch.tensor([[[3.0, 1.0, 2.0]]]), h[:1]).item() == 0.0  # ranked as humans rank


class Linear(nn.Module):
    """A backbone small enough to differentiate by hand: logits = W x + b on a 1x2 image
    of 3 channels, features = the input times a unit weight (so Grad-CAM is defined)."""

    input_size, feature_size, has_gap_classifier, name = 2, 2, False, "linear"

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.0, 2.0, -0.5], [0.0, 1.0, -1.0, 1.0, 0.5, 0.5]]))
            self.fc.bias.zero_()
        self.unit = nn.Parameter(torch.ones(()))

    def forward(self, x):
        features = self.unit * x  # (B,3,1,2), in the graph
        return self.fc(features.flatten(1)), features


def tiny_batch(**aux):
    x = torch.tensor([[[[0.5, -1.0]], [[0.2, 0.3]], [[-0.4, 1.0]]], [[[1.0, 0.0]], [[0.0, -0.5]], [[0.3, 0.3]]]])
    return Batch(x, torch.tensor([0, 1]), aux)


def test_the_gals_method_penalises_the_input_gradient_of_the_mean_cross_entropy():
    method = METHODS.get("gals")(TrainConfig(method="gals", lambda0=10.0))
    keep = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]])  # (2,1,1,2)
    batch = tiny_batch(keep=keep, valid=torch.tensor([True, True]))
    model = Linear()
    loss, stats = method.loss(model, batch, 0)
    # by hand: d mean CE / dx_i = (softmax_i - onehot_i) W / B
    logits = model.fc(batch.x.flatten(1))
    p = logits.softmax(1) - F.one_hot(batch.y, 2)
    grads = (p @ model.fc.weight / 2).view(2, 3, 1, 2)
    want = (grads * (1 - keep)).abs().mean()
    ce = F.cross_entropy(logits, batch.y)
    assert stats["gals"].item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ce + 10.0 * want).item(), rel=1e-5)
    loss.backward()  # double backpropagation reaches the weights
    assert model.fc.weight.grad is not None


@pytest.mark.parametrize("attribution", ["input-x-gradient", "grad-cam"])
def test_the_energy_method_scores_the_true_class_attribution(attribution):
    method = METHODS.get("energy")(TrainConfig(method="energy", attribution=attribution, lambda0=2.0))
    mask = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (2,1,2)
    batch = tiny_batch(mask=mask, valid=torch.tensor([True, True]))
    model = Linear()
    w = model.fc.weight.view(2, 3, 1, 2)[batch.y]  # (B,3,1,2): d logit_y / dx
    if attribution == "input-x-gradient":
        attr = (w * batch.x).sum(1)  # (B,1,2)
    else:  # features = input: channel weights are the mean gradient, then ReLU of the weighted sum
        attr = F.relu((w.mean(dim=(2, 3), keepdim=True) * batch.x).sum(1))
    pos = attr.clamp(min=0)
    want = (1 - (pos * mask).sum(dim=(1, 2)) / pos.sum(dim=(1, 2))).sum()
    loss, stats = method.loss(model, batch, 0)
    ce = F.cross_entropy(model.fc(batch.x.flatten(1)), batch.y)
    assert stats["energy"].item() == pytest.approx(want.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ce + 2.0 * want).item(), rel=1e-5)


def test_the_hint_method_ranks_grad_cam_cells_against_the_map():
    method = METHODS.get("hint")(TrainConfig(method="hint", lambda0=3.0))
    human = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # (2,1,2)
    batch = tiny_batch(human=human)
    model = Linear()
    w = model.fc.weight.view(2, 3, 1, 2)[batch.y]
    g = F.relu((w.mean(dim=(2, 3), keepdim=True) * batch.x).sum(1)).flatten(1)  # (B,2)
    want = (F.relu(g[0, 1] - g[0, 0]) + F.relu(g[1, 0] - g[1, 1])) / 2  # one ranked pair per image
    _, stats = method.loss(model, batch, 0)
    assert stats["hint"].item() == pytest.approx(want.item(), rel=1e-5)


# ---- counterexamples ------------------------------------------------------------------

def test_the_counterexample_pieces_by_hand():
    x = torch.tensor([[[[0.0, 1.0]], [[-0.5, 1.0]], [[-1.0, 1.0]]]])  # (1,3,1,2)
    # pixel 0 in [0,1]: (0.5, 0.25, 0), brightness 0.5; pixel 1: brightness 1
    out = recoloured(x, torch.tensor([[1.0, 0.5, 0.0]]))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, -0.5, -1.0]))
    assert torch.allclose(out[0, :, 0, 1], torch.tensor([1.0, 0.0, -1.0]))
    assert torch.equal(shuffled(x, torch.tensor([[1, 0]])), x.flip(-1))
    keep = torch.tensor([[[[1.0, 0.25]]]])
    assert torch.allclose(blend(x, keep, torch.zeros_like(x))[0, 0, 0], torch.tensor([0.0, 0.25]))


def images(b=4, side=6, channels=3):
    torch.manual_seed(0)
    x = torch.rand(b, channels, side, side) * 2 - 1
    keep = torch.zeros(b, 1, side, side)
    keep[:, :, 1:4, 1:4] = 1.0  # the object
    return x, keep


@pytest.mark.parametrize("component,fill", [("region", "noise"), ("region", "background"), ("region", "shuffle"),
                                            ("texture", None), ("colour", None)])
def test_each_kind_of_counterexample_changes_only_the_irrelevant_component(component, fill):
    x, keep = images()
    torch.manual_seed(1)
    out = counterexample(x, keep, component, fill)
    inside, outside = keep.bool().expand_as(x), ~keep.bool().expand_as(x)
    if component == "colour":
        assert torch.equal(out[outside], x[outside])  # the background is kept
        # inside: each pixel's brightness times one colour per image, so the ratio is constant
        ratio = ((out + 1) / 2)[:, :, 1:4, 1:4] / ((x + 1) / 2).amax(1, keepdim=True)[:, :, 1:4, 1:4]
        colour = ratio.flatten(2)[:, :, 0]  # (B,3)
        assert torch.allclose(ratio, colour[:, :, None, None].expand_as(ratio), atol=1e-5)
        assert colour.min() >= 0 and colour.max() <= 1 and not torch.allclose(colour[0], colour[1])
        return
    assert torch.equal(out[inside], x[inside])  # the object is kept
    assert not torch.allclose(out[outside], x[outside])
    assert out.min() >= -1 and out.max() <= 1
    if component == "texture" or fill == "background":  # another image's pixels (or its own, drawn again)
        others = [all(torch.equal(out[i][outside[i]], x[j][outside[j]]) for _ in [0]) for i in range(4)
                  for j in range(4)]
        assert sum(others) == 4
    if fill == "shuffle":  # the image's own values, moved
        for i in range(4):
            assert torch.equal(out[i][outside[i]].sort().values.unique(), out[i][outside[i]].sort().values.unique())
            assert set(out[i][outside[i]].tolist()) <= set(x[i].flatten().tolist())


def test_noise_is_grey_on_a_grey_data_set_and_fresh_each_draw():
    x, keep = images(channels=1)
    x = x.expand(-1, 3, -1, -1)  # a grey batch as the network sees it
    torch.manual_seed(2)
    a = counterexample(x, keep, "region", "noise", channels=1)
    b = counterexample(x, keep, "region", "noise", channels=1)
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 1], a[:, 2])
    assert not torch.equal(a, b)  # every batch draws afresh
    torch.manual_seed(2)
    assert torch.equal(counterexample(x, keep, "region", "noise", channels=1), a)  # the run's seed fixes them


class Spy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 6 * 6, 10)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x.flatten(1)), x


def test_ce_trains_on_the_batch_and_k_copies_with_the_same_labels():
    method = METHODS.get("ce")(TrainConfig(method="ce", dataset="decoymnist", counterexamples=2, ce_fill="noise"))
    method.irrelevant, method.channels = "region", 3
    x, keep = images()
    valid = torch.tensor([True, True, False, True])  # an image without a map gets no copy
    y = torch.tensor([1, 2, 3, 4])
    model = Spy()
    loss, stats = method.loss(model, Batch(x, y, {"keep": keep, "valid": valid}), 0)
    seen = model.seen[0]
    assert seen.shape[0] == 4 + 2 * 3 and torch.equal(seen[:4], x)
    labels = torch.cat([y, y[valid], y[valid]])
    assert loss.item() == pytest.approx(F.cross_entropy(model.fc(seen.flatten(1)), labels).item(), rel=1e-6)
    assert stats["correct"] <= 4  # accuracy counts the batch's own images only


# ---- what is irrelevant ---------------------------------------------------------------

def test_what_is_irrelevant_declared_stated_and_refused():
    assert DATASETS["colormnist"].shortcut == "colour" and DATASETS["shapes-bg"].shortcut == "texture"
    assert irrelevant_component(DATASETS["decoymnist"], None) == "region"
    assert irrelevant_component(DATASETS["decoymnist"], "background") == "region"  # the same, stated
    imported = dataclasses.replace(DATASETS["shapes-bg"], name="mine", imported_from="/x", shortcut="region")
    assert [irrelevant_component(imported, s) for s in ("background", "colour", "texture")] == \
        ["region", "colour", "texture"]
    with pytest.raises(L2LError, match="is grey"):
        irrelevant_component(DATASETS["decoymnist"], "colour")
    with pytest.raises(L2LError, match="already declares"):
        irrelevant_component(DATASETS["colormnist"], "texture")


def test_method_options_are_filled_for_their_method_and_recorded():
    cfg = resolve_run(TrainConfig(dataset="decoymnist", method="ce", backbone="cdep-cnn")).cfg
    assert (cfg.counterexamples, cfg.ce_fill, cfg.attribution, cfg.irrelevant) == (1, "noise", None, None)
    cfg = resolve_run(TrainConfig(dataset="colormnist", method="ce", backbone="cdep-cnn")).cfg
    assert (cfg.counterexamples, cfg.ce_fill) == (1, None)  # no region to fill
    assert resolve_run(TrainConfig(dataset="decoymnist", method="energy", backbone="cdep-cnn")).cfg.attribution == \
        "grad-cam"
    plain = resolve_run(TrainConfig(dataset="decoymnist", method="vanilla")).cfg
    stated = resolve_run(TrainConfig(dataset="decoymnist", method="vanilla", irrelevant="background")).cfg
    assert plain.fingerprint() == stated.fingerprint()  # a built set's own component: one folder


@pytest.mark.parametrize("args,needle", [
    (["--method", "ce", "--irrelevant", "colour"], "is grey"),
    (["--dataset", "colormnist", "--method", "ce", "--irrelevant", "background"], "already declares"),
    (["--method", "gals", "--maps", "none"], "needs maps"),
    (["--method", "rrr", "--attribution", "cam"], "an option of method energy"),
    (["--method", "vanilla", "--counterexamples", "2"], "an option of method ce"),
    (["--dataset", "colormnist", "--method", "ce", "--ce-fill", "shuffle"], "does not apply"),
    (["--method", "energy", "--attribution", "cam", "--backbone", "cdep-cnn"], "global-average-pooling"),
    (["--method", "energy", "--attribution", "saliency"], "unknown attribution"),
    (["--method", "ce", "--counterexamples", "0"], "counterexamples must be"),
    (["--dataset", "mnist", "--method", "ce"], "declares none"),
])
def test_guided_bad_inputs_one_line_exit_2(args, needle, tmp_path, capsys):
    code = main(["train", "--data-dir", str(tmp_path / "data"), "--runs-dir", str(tmp_path), "--train-subset", "50",
                 "--epochs", "1", "--quiet", "--dataset", "decoymnist", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()  # refused before any data is built


# ---- end to end -----------------------------------------------------------------------

@pytest.fixture
def small_test_split(monkeypatch):
    """The test split cut to its first 500 images: evaluating 10,000 is most of a tiny run's
    time, and tests/test_train.py covers it."""
    real = train_mod.load_dataset

    def load(*a, **kw):
        ds = real(*a, **kw)
        return dataclasses.replace(ds, test=ds.test.subset(np.arange(500)))

    monkeypatch.setattr(train_mod, "load_dataset", load)


@pytest.mark.parametrize("method,dataset,extra", [
    ("gals", "decoymnist", {}),
    ("energy", "decoymnist", {"attribution": "input-x-gradient"}),
    ("energy", "decoymnist", {"attribution": "cam", "backbone": "lenet-gap"}),
    ("hint", "decoymnist", {"maps": "intensity"}),
    ("ce", "decoymnist", {"counterexamples": 2, "ce_fill": "shuffle"}),
    ("ce", "colormnist", {}),
])
def test_each_guided_method_trains_end_to_end(method, dataset, extra, data_dir, tmp_path, small_test_split):
    cfg = TrainConfig(dataset=dataset, method=method, schedule="adam", epochs=1, train_subset=200,
                      **{"backbone": "cdep-cnn", **extra})
    r = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert r["config"]["method"] == method and 0 <= r["test"]["accuracy"] <= 100
    assert r["maps"]["name"] == extra.get("maps", "oracle") and len(r["history"]) == 1
    for name, value in extra.items():
        assert r["config"][name] == value  # the method's options are recorded
    assert r["history"][0]["lambda"] == (0.0 if method == "ce" else METHODS.get(method).default_lambda)


# ---- the guided profile ---------------------------------------------------------------

def test_the_guided_profile_plans_every_cell_and_costs_new_methods_by_vanilla(tmp_path):
    profile = rep.PROFILES["guided"]
    jobs = rep.plan(profile, seeds=[0])
    cells = {(r.cfg.dataset, r.cfg.method, r.cfg.maps, r.cfg.lambda0, r.cfg.epochs, r.cfg.input_transform)
             for _, r in jobs}
    for method in NEW:
        assert ("decoymnist", method, "oracle") in {c[:3] for c in cells}
        assert ("decoymnist", method, "intensity") in {c[:3] for c in cells}
    for lam in (5000.0, 10000.0):
        for epochs in (1, 5):
            assert ("colormnist", "cdep", "none", lam, epochs, "none") in cells
    assert ("colormnist", "ce", "oracle", 0.0, 1, "none") in cells
    assert ("colormnist", "vanilla", "none", 0.0, 1, "colour-invariant") in cells
    assert ("colormnist", "vanilla", "none", 0.0, 5, "none") in cells  # the 5-epoch cdep runs' baseline
    assert profile.seeds == [0, 1, 2, 3, 4]
    vanilla = next(r.cfg for _, r in jobs if r.cfg.dataset == "decoymnist" and r.cfg.method == "vanilla")
    folder = run_dir_for(vanilla, tmp_path)
    write_record(folder, {"config": vanilla.to_dict(), "maps": {}, "selection": {"epoch": 0},
                          "test": {"accuracy": 50.0, "n": 10}, "history": [], "wall_seconds": 3600.0 * vanilla.epochs})
    last = rep.describe_plan(profile, seeds=[0], runs_dir=tmp_path)[-1]
    decoy = [r for _, r in jobs if r.cfg.dataset == "decoymnist" and r.cfg.method != "vanilla"]
    hours = sum(r.method.relative_cost() * r.cfg.epochs for r in decoy)
    assert f"about {hours:.1f} h for the {len(decoy)} timed by vanilla's finished runs" in last


def test_counterexamples_weigh_no_extra_term_yet_are_a_guided_method_in_the_verdicts():
    def record(method, seed, acc, maps, lambda0):
        return Record(run_dir=Path(f"/runs/{method}/seed{seed}"), role="method",
                      config=TrainConfig(dataset="decoymnist", method=method, seed=seed, lambda0=lambda0),
                      maps=MapsInfo.from_result(maps), test=TestMetrics(accuracy=acc, n=10_000),
                      history=({"epoch": 0, "val_acc": 99.0},), selected_epoch=0, seconds_per_epoch=1.0,
                      wall_seconds=10.0, device="cpu", environment={}, num_classes=10)

    records = [record("vanilla", s, acc, {"name": "none", "kind": "none"}, 0.0) for s, acc in enumerate([50, 52, 48])]
    records += [record("ce", s, acc, {"name": "oracle", "kind": "annotation"}, 0.0)
                for s, acc in enumerate([80, 82, 78])]
    (verdict,) = verdict_rows(aggregate(records))
    assert (verdict["baseline"], verdict["method"], verdict["diff"]) == ("vanilla", "ce", 30.0)
    assert verdict["label"] == "ce, oracle (annotation)" and verdict["effect"] == "helps"


def test_an_imported_set_states_what_is_irrelevant_and_the_run_records_it(tmp_path, monkeypatch):
    from test_import import make_folder

    import_dataset("pets", make_folder(tmp_path / "src", n=(8, 2, 2)), tmp_path / "data", size=16, progress=False)
    cfg = TrainConfig(dataset="pets", method="ce", irrelevant="texture", epochs=1)
    seen = []
    real = counterexample

    def spy(x, keep, component, fill, channels=3):
        seen.append((component, fill))
        return real(x, keep, component, fill, channels)

    monkeypatch.setattr("learning_to_look.methods.ce.counterexample", spy)
    r = run(cfg, runs_dir=tmp_path / "runs", data_dir=tmp_path / "data", progress=False)
    assert r["config"]["irrelevant"] == "texture" and r["config"]["ce_fill"] is None
    assert seen and set(seen) == {("texture", None)}
    stated = resolve_run(dataclasses.replace(cfg, irrelevant="background"), tmp_path / "data").cfg
    assert stated.ce_fill == "noise" and stated.fingerprint() != resolve_run(cfg, tmp_path / "data").cfg.fingerprint()


def test_a_killed_ce_run_resumes_with_the_same_counterexamples(data_dir, tmp_path, small_test_split):
    cfg = TrainConfig(dataset="decoymnist", method="ce", backbone="cdep-cnn", schedule="adam", epochs=2,
                      train_subset=200, seed=3)
    whole = run(cfg, runs_dir=tmp_path / "whole", data_dir=data_dir, progress=False)

    def die(row):
        if row["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False, on_epoch=die)
    resumed = run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False)
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]  # to the bit
