"""The training engine end to end on small subsets: every method runs, the schedule
is the paper's, selection never sees the test split, and runs resume exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from learning_to_look.training import engine, selection
from learning_to_look.training import run as train_mod
from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.maps import MapGenerator, register_map_source, validate_maps
from learning_to_look.methods import METHODS
from learning_to_look.training.resolve import resolve, resolve_run
from learning_to_look.analysis.records import collect
from learning_to_look.record import read_record
from learning_to_look.training.run import run

SMALL = dict(epochs=2, e_att=1, train_subset=2000)


@pytest.mark.parametrize("method,backbone,dataset", [
    ("vanilla", "lenet-gap", "decoymnist"),
    ("l2l", "lenet-gap", "colormnist"),
    ("rrr", "lenet-gap", "decoymnist"),
    ("gradcam-kl", "cdep-cnn", "decoymnist"),
    ("eg", "cdep-cnn", "decoymnist"),
    ("cdep", "lenet-gap", "decoymnist"),
])
def test_each_method_runs_end_to_end(method, backbone, dataset, data_dir, tmp_path):
    # the attribution priors are slow: fewer images (their losses are checked by hand in
    # test_seams.py and test_cd.py); a large cdep lambda under SGD with momentum 0.98 can
    # silence every unit in 2 epochs (no CAM left to measure): the path is what is tested
    extra = {"train_subset": 500, **({"lambda0": 10.0} if method == "cdep" else {})} if method in ("eg", "cdep") else {}
    cfg = TrainConfig(dataset=dataset, method=method, backbone=backbone, **{**SMALL, **extra})
    r = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert r["config"]["method"] == method and r["test"]["n"] == 10_000
    assert 0 <= r["test"]["accuracy"] <= 100
    assert 0 <= r["test"]["cam_on_digit"] <= 1
    assert ("cam_on_decoy" in r["test"]) == (dataset == "decoymnist")
    assert r["maps"]["name"] == ("none" if method == "vanilla" else "oracle")
    assert r["maps"]["kind"] in ("none", "annotation")
    assert len(r["history"]) == 2 and r["dataset"]["n_train"] == cfg.train_subset
    run_dir = next(tmp_path.rglob("result.json")).parent
    assert {"config.json", "model.pt", "result.json", "examples.npz"} <= {p.name for p in run_dir.iterdir()}
    assert r["role"] == "method"
    quality = r["maps"]["quality"]
    if r["maps"]["name"] == "none":
        assert quality is None
    else:
        assert quality["iou"] == 1.0 and quality["n_images"] == min(1000, cfg.train_subset)
    record = read_record(run_dir)
    ex = record.examples()
    assert list(ex["test_labels"]) == list(range(6)) and ex["test_cams"].shape == (6, 28, 28)
    assert 0 <= ex["test_cams"].min() and ex["test_cams"].max() <= 1
    assert ("train_maps" in ex) == (r["maps"]["name"] != "none") and ex["train_images"].shape[0] == 6


def test_reading_a_finished_run_never_rewrites_its_record(data_dir, tmp_path):
    """A run shared by two profiles keeps the record it was trained with; the report reads
    its role from what it computed (vanilla on clean MNIST: the upper bound)."""
    cfg = TrainConfig(dataset="mnist", method="vanilla", epochs=1, train_subset=200)
    assert run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)["role"] == "method"
    written = next(tmp_path.rglob("result.json")).read_bytes()
    assert run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False, role="upper-bound").role == "method"
    assert next(tmp_path.rglob("result.json")).read_bytes() == written and collect(tmp_path)[0].role == "upper-bound"


def test_l2l_schedule_lambda_ramp_and_optimizer_reset(data_dir, tmp_path):
    cfg = TrainConfig(dataset="decoymnist", method="l2l", epochs=4, e_att=2, step_size=1, gamma=0.1, train_subset=500)
    r = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)
    h = r["history"]
    assert [row["phase"] for row in h] == ["attention", "attention", "joint", "joint"]
    assert [row["lambda"] for row in h] == [0.0, 0.0, 160.0, 176.0]
    assert [row["lr"] for row in h] == pytest.approx([1e-3, 1e-4, 1e-3, 1e-4])  # scheduler restarts at E_att
    l2l = METHODS.get("l2l")(resolve(cfg))
    assert [l2l.resets_optimizer(e) for e in range(4)] == [False, False, True, False]  # fresh momentum at E_att
    assert [row["eligible"] for row in h] == [False, False, True, True]
    assert r["selection"]["epoch"] >= 2


def test_adam_schedule_is_recorded_and_keeps_its_learning_rate(data_dir, tmp_path):
    cfg = TrainConfig(dataset="decoymnist", method="l2l", schedule="adam", epochs=3, e_att=1, train_subset=300)
    r = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)
    saved = r["config"]
    assert (saved["schedule"], saved["batch_size"], saved["lr"], saved["momentum"], saved["step_size"]) == \
        ("adam", 64, 1e-3, None, None)
    assert [row["lr"] for row in r["history"]] == [1e-3] * 3  # no StepLR under Adam
    paper = run(TrainConfig(dataset="decoymnist", method="l2l", epochs=3, e_att=1, train_subset=300),
                runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert paper["config"]["schedule"] == "paper" and paper["test"] != r["test"]


def test_phase1_ce_variant(data_dir, tmp_path):
    cfg = TrainConfig(dataset="decoymnist", method="l2l", phase1="ce", epochs=3, e_att=1, train_subset=500)
    h = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)["history"]
    assert [row["phase"] for row in h] == ["ce", "joint", "joint"]
    assert "train_attn" not in h[0] or h[0]["train_attn"] == 0


def test_selection_never_reads_the_test_split(data_dir, tmp_path, monkeypatch):
    """Scrambling the test labels changes test accuracy but nothing that selection saw."""
    cfg = TrainConfig(dataset="decoymnist", method="l2l", epochs=3, e_att=1, train_subset=600)
    a = run(cfg, runs_dir=tmp_path / "a", data_dir=data_dir, progress=False)
    real_load = train_mod.load_dataset

    def scrambled(*args, **kw):
        ds = real_load(*args, **kw)
        test = dataclasses.replace(ds.test, labels=np.random.default_rng(0).permutation(ds.test.labels),
                                   images=ds.test.images[::-1].copy())
        return dataclasses.replace(ds, test=test)

    monkeypatch.setattr(train_mod, "load_dataset", scrambled)
    b = run(cfg, runs_dir=tmp_path / "b", data_dir=data_dir, progress=False)
    assert a["selection"] == b["selection"]
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert a["test"]["accuracy"] != b["test"]["accuracy"]


def test_fit_takes_no_test_split():
    import inspect

    params = inspect.signature(train_mod.fit).parameters
    assert list(params)[:3] == ["run", "train", "val"] and not any("test" in p for p in params)


@pytest.mark.parametrize("method, subset", [("l2l", 600), ("eg", 200)])  # eg draws from the global RNG each step
def test_resume_after_kill_equals_uninterrupted(method, subset, data_dir, tmp_path):
    cfg = TrainConfig(dataset="colormnist", method=method, epochs=3, e_att=1, train_subset=subset, seed=3)
    whole = run(cfg, runs_dir=tmp_path / "whole", data_dir=data_dir, progress=False)

    def die(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False, on_epoch=die)
    (ckpt,) = (tmp_path / "cut").rglob("checkpoint.pt")
    assert not list((tmp_path / "cut").rglob("result.json"))
    state = torch.load(ckpt, weights_only=False)
    spent = state["wall_seconds"]  # by the killed process, up to its last epoch
    del state["config"]["pretrained"]  # saved before that field existed: it counts at its default
    torch.save(state, ckpt)
    resumed = run(cfg, runs_dir=tmp_path / "cut", data_dir=data_dir, progress=False)
    assert resumed["wall_seconds"] > spent > 0  # the resumed run's time counts both processes
    assert resumed["test"] == whole["test"]
    assert resumed["selection"] == whole["selection"]
    assert [r["val_acc"] for r in resumed["history"]] == [r["val_acc"] for r in whole["history"]]
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in whole["history"]]  # to the bit


def test_a_saved_config_matches_with_newer_fields_at_their_defaults_only():
    cfg = resolve(TrainConfig(dataset="decoymnist", method="vanilla"))
    saved = cfg.to_dict()
    assert cfg.matches(saved)
    assert cfg.matches({k: v for k, v in saved.items() if k != "pretrained"})
    assert not cfg.matches(saved | {"lr": 0.5})
    assert not cfg.matches(saved | {"no_such_field": 1})
    assert not cfg.matches({k: v for k, v in saved.items() if k != "lr"})  # lr then takes None, not the resolved value


def test_same_seed_same_numbers_and_finished_run_is_reused(data_dir, tmp_path):
    cfg = TrainConfig(dataset="decoymnist", method="vanilla", epochs=1, train_subset=500, seed=5)
    a = run(cfg, runs_dir=tmp_path / "a", data_dir=data_dir, progress=False)
    b = run(cfg, runs_dir=tmp_path / "b", data_dir=data_dir, progress=False)
    assert a["test"] == b["test"]
    again = run(cfg, runs_dir=tmp_path / "a", data_dir=data_dir, progress=False)
    assert again["wall_seconds"] == a["wall_seconds"]  # read back, not retrained


def test_map_of_wrong_shape_or_nan_is_rejected():
    with pytest.raises(L2LError, match="shape"):
        validate_maps(np.zeros((5, 27, 28)), 5, (28, 28), "test")
    bad = np.zeros((5, 28, 28))
    bad[2, 3, 4] = np.nan
    with pytest.raises(L2LError, match="NaN"):
        validate_maps(bad, 5, (28, 28), "test")
    with pytest.raises(L2LError, match=r"\[0, 1\]"):
        validate_maps(np.full((5, 28, 28), 2.0), 5, (28, 28), "test")


@register_map_source
class NanMaps(MapGenerator):
    """A broken map source, registered for this test only."""

    name = "test-nan"
    kind = "external"
    cacheable = False

    def generate(self, split):
        return np.full((len(split), 28, 28), np.nan, np.float32)


def test_nan_map_source_stops_training(data_dir, tmp_path):
    with pytest.raises(L2LError, match="NaN"):
        run(TrainConfig(dataset="decoymnist", method="l2l", maps="test-nan", **SMALL), runs_dir=tmp_path,
            data_dir=data_dir, progress=False)


def _diverge_at(epoch_nan, monkeypatch):
    real = engine._train_epoch

    def train_epoch(model, method, train, opt, shuffle, epoch, *rest):
        if epoch == epoch_nan:
            raise engine.Diverged(f"loss became nan at epoch {epoch}; lower --lr or --lambda0")
        return real(model, method, train, opt, shuffle, epoch, *rest)

    monkeypatch.setattr(engine, "_train_epoch", train_epoch)


def test_a_diverging_loss_ends_training_and_selects_among_the_whole_epochs(data_dir, tmp_path, monkeypatch):
    _diverge_at(2, monkeypatch)
    cfg = TrainConfig(dataset="decoymnist", method="vanilla", epochs=4, e_att=1, train_subset=300)
    r = run(cfg, runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert [h["epoch"] for h in r["history"]] == [0, 1] and r["selection"]["epoch"] in (0, 1)
    assert "loss became nan at epoch 2" in r["stopped"]
    (record,) = collect(tmp_path)
    assert record.stopped == r["stopped"]
    _diverge_at(0, monkeypatch)  # nothing to select: an error, and no result
    with pytest.raises(engine.Diverged, match="lower --lr"):
        run(dataclasses.replace(cfg, seed=1), runs_dir=tmp_path, data_dir=data_dir, progress=False)
    assert len(collect(tmp_path)) == 1


def test_a_profile_run_that_diverges_comes_back_as_failed_and_a_bug_raises(monkeypatch, tmp_path):
    """A problem of one run, with its fix, must not stop the other runs of a profile; a bug must."""
    from learning_to_look.training import reproduce
    from learning_to_look.training.reproduce import attempt_run

    run_ = resolve_run(TrainConfig(dataset="decoymnist", method="vanilla", epochs=2, e_att=1, train_subset=300))

    def diverges(*args):
        raise engine.Diverged("loss became nan at epoch 0; lower --lr or --lambda0")

    monkeypatch.setattr(reproduce, "run_task", diverges)
    assert attempt_run(run_, None, None, False, "method") == "loss became nan at epoch 0; lower --lr or --lambda0"

    def bug(*args):
        raise ZeroDivisionError

    monkeypatch.setattr(reproduce, "run_task", bug)
    with pytest.raises(ZeroDivisionError):
        attempt_run(run_, None, None, False, "method")


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "unknown method"),
    (["--lambda0", "-1"], "lambda0 must be >= 0"),
    (["--seeds", "0,x"], "malformed --seeds"),
    (["--seeds", "1,1"], "malformed --seeds"),
    (["--dataset", "nope"], "unknown data set"),
    (["--maps", "nope"], "no cached map set matches"),
    (["--maps", "not-decoy"], "needs a data set with a decoy square"),
    (["--method", "rrr", "--lr", "1e8"], "lower --lr or --lambda0"),
    (["--e-att", "40"], "E_att"),
    (["--selection", "best"], "unknown selection"),
    (["--method", "l2l", "--backbone", "cdep-cnn"], "global-average-pooling"),
])
def test_cli_bad_inputs_one_line_exit_2(args, needle, data_dir, tmp_path, capsys):
    code = main(["train", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--train-subset", "200",
                 "--epochs", "2", "--e-att", "1", "--quiet", *args] if "--e-att" not in args else
                ["train", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--quiet", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_cli_train_prints_mean_std_over_seeds(data_dir, tmp_path, capsys):
    code = main(["train", "--dataset", "decoymnist", "--method", "vanilla", "--seeds", "0,1", "--epochs", "1",
                 "--train-subset", "300", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "seed 0:" in out and "seed 1:" in out and "+-" in out and "over 2 seeds" in out


def test_config_file_and_flags(tmp_path, data_dir, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dataset: decoymnist\nmethod: vanilla\nepochs: 1\ntrain_subset: 300\n")
    code = main(["train", "--config", str(cfg_file), "--seeds", "4", "--data-dir", str(data_dir),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert code == 0
    saved = next((tmp_path / "runs").rglob("config.json")).read_text()
    assert '"epochs": 1' in saved and '"seed": 4' in saved and '"dataset": "decoymnist"' in saved
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    assert main(["train", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown config keys" in capsys.readouterr().err


def test_a_subset_run_maps_only_its_images_unless_the_whole_split_is_cheap_or_cached(datasets, monkeypatch):
    ds, used = datasets["decoymnist"], np.arange(10)
    clip = resolve_run(TrainConfig(dataset="decoymnist", maps="clip", train_subset=8,
                                   map_options={"vlm": "some/clip-not-downloaded-yet"}))
    monkeypatch.setattr(train_mod, "cache_meta", lambda *a, **k: None)  # nothing cached (and no weights to name)
    assert len(train_mod._maps_split(clip, ds, used)) == 10  # a generator would have to make them: only these
    monkeypatch.setattr(train_mod, "cache_meta", lambda *a, **k: {"complete": True})
    assert train_mod._maps_split(clip, ds, used) is ds.train  # already made for the whole split: read those
    oracle = resolve_run(TrainConfig(dataset="decoymnist", maps="oracle", train_subset=8))
    assert train_mod._maps_split(oracle, ds, used) is ds.train  # cheap: computed for all, as before
    named = dataclasses.replace(oracle, maps=None, cfg=dataclasses.replace(oracle.cfg, maps="clip-0123456789"))
    assert train_mod._maps_split(named, ds, used) is ds.train  # a cached set was made for the whole split


def test_selection_keeps_the_best_eligible_epoch_on_validation():
    """Both engines select through keep_if_best: an ineligible epoch, a lower score or a
    NaN score never replaces what is kept, and the kept weights are a copy."""
    cfg = TrainConfig(selection="val_acc")
    weights = {"w": torch.zeros(2)}
    best = selection.unselected("val_acc")
    rows = [selection.scored(cfg, {"epoch": 0, "val_acc": 99.0}, eligible=False),
            selection.scored(cfg, {"epoch": 1, "val_acc": 80.0}, eligible=True),
            selection.scored(cfg, {"epoch": 2, "val_acc": 70.0}, eligible=True),
            selection.scored(cfg, {"epoch": 3, "val_acc": float("nan")}, eligible=True)]
    assert rows[0]["score"] is None and rows[1]["score"] == pytest.approx(0.8)
    for row in rows:
        best = selection.keep_if_best(best, row, weights)
        weights["w"] += 1.0  # training goes on after the epoch was kept
    rule, kept = selection.chosen(best)
    assert rule == "val_acc" and kept["epoch"] == 1 and kept["score"] == pytest.approx(0.8)
    assert kept["state"]["w"].tolist() == [1.0, 1.0]  # epoch 1's weights, not a view of today's


def _select(cfg: TrainConfig, rows: list[dict]) -> tuple[str, int, str | None]:
    sel = selection.unselected(cfg.selection)
    for row in rows:
        sel = selection.keep_if_best(sel, selection.scored(cfg, row, eligible=True), {"w": torch.zeros(1)})
    rule, kept = selection.chosen(sel)
    return rule, kept["epoch"], selection.selection_note(sel, cfg.selection_beta)


def test_the_papers_rule_falls_back_where_it_would_pick_the_worst_epoch():
    """acc * (1 - KL) with KL >= 1 is negative for every epoch, and the least accurate epoch
    would win (seen on imported data: 41 % chosen over 96 %); the exp form is monotone."""
    cfg = TrainConfig(selection="acc_x_1mkl")
    rows = [{"epoch": 0, "val_acc": 41.0, "val_kl": 1.5}, {"epoch": 1, "val_acc": 96.0, "val_kl": 1.4}]
    assert selection.selection_score("acc_x_1mkl", rows[0], 1.0) > selection.selection_score("acc_x_1mkl", rows[1],
                                                                                               1.0)  # inverted
    rule, epoch, note = _select(cfg, rows)
    assert (rule, epoch) == ("acc_exp_kl", 1) and "KL 1.500 >= 1" in note and "acc_exp_kl (beta 1)" in note
    well_defined = [{"epoch": 0, "val_acc": 90.0, "val_kl": 0.2}, {"epoch": 1, "val_acc": 95.0, "val_kl": 0.5}]
    assert _select(cfg, well_defined) == ("acc_x_1mkl", 0, None)  # 0.72 > 0.475: the paper's rule decides


def test_ties_and_all_zero_worst_groups_are_broken_by_validation_accuracy():
    cfg = TrainConfig(dataset="shapes-bg", selection="val_worst_group")
    rows = [{"epoch": e, "val_acc": acc, "val_worst_group_accuracy": 0.0} for e, acc in enumerate((30.0, 96.0, 50.0))]
    assert _select(cfg, rows)[:2] == ("val_worst_group", 1)


def test_the_seeds_summary_is_mean_and_sample_std():
    from types import SimpleNamespace

    from learning_to_look.cli.train import _over_seeds
    from learning_to_look.record import TestMetrics

    cfg = TrainConfig(dataset="decoymnist", method="vanilla")
    plain = [SimpleNamespace(test=TestMetrics(accuracy=a, n=10)) for a in (90.0, 92.0)]
    assert _over_seeds(cfg, plain) == "decoymnist vanilla: test accuracy 91.00 +- 1.41 % over 2 seeds"
    grouped = [SimpleNamespace(test=TestMetrics(accuracy=a, n=10, worst_group_accuracy=a - 10))
               for a in (90.0, 92.0, 94.0)]
    assert _over_seeds(cfg, grouped).splitlines()[1] == "decoymnist vanilla: worst-group accuracy 82.00 +- 2.00 %"


def test_a_lambda_given_to_a_method_without_an_extra_term_is_dropped():
    """vanilla has nothing to weigh: a λ passed anyway must not make its record look guided
    (the report would then find no baseline for the setting) nor give it a new folder."""
    cfg = resolve(TrainConfig(dataset="decoymnist", method="vanilla", lambda0=5.0))
    assert cfg.lambda0 == 0.0 and cfg.fingerprint() == resolve(TrainConfig(dataset="decoymnist",
                                                                            method="vanilla")).fingerprint()
    assert resolve(TrainConfig(dataset="decoymnist", method="rrr", maps="not-decoy", lambda0=5.0)).lambda0 == 5.0
