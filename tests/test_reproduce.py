"""`l2l reproduce` end to end on the quick profile (interrupted, resumed, rerun from
cache), the report's files and rules, the map degradations and the aggregation."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from learning_to_look.analysis import report as report_mod
from learning_to_look.training import reproduce as rep
from learning_to_look.training import run as train_mod
from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.data import Split
from learning_to_look.errors import L2LError
from learning_to_look.maps import get_map_source, map_quality
from learning_to_look.methods import METHODS
from learning_to_look.training.resolve import resolve
from learning_to_look.record import MapsInfo, Record, TestMetrics, write_record
from learning_to_look.analysis.records import aggregate, collect
from learning_to_look.analysis import stats
from learning_to_look.analysis.stats import mean_std
from learning_to_look.analysis.verdicts import attach_published, bite_rows, verdict_rows, verdict_summary

PUBLISHED = report_mod.published().rows


def planned(*args, **kwargs):
    """A profile's plan as (cell, resolved config) pairs."""
    return [(cell, run.cfg) for cell, run in rep.plan(*args, **kwargs)]


def finished_run(folder: Path, cfg: TrainConfig, wall_seconds: float) -> None:
    """A finished run's record with only what a plan reads: its config and its time."""
    write_record(folder, {"config": cfg.to_dict(), "maps": {}, "selection": {"epoch": 0}, "test": {"accuracy": 50.0,
                          "n": 10}, "history": [], "wall_seconds": wall_seconds})


FIGURES = ("qualitative.png", "maps_colormnist.png", "maps_decoymnist.png", "curves.png", "accuracy.png",
           "shortcut_search.png", "verdict.png", "sensitivity.png")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- degradations and map quality on hand-made masks --------------------------------

def hand_split(n: int = 4, corners: bool = True, name: str = "train") -> Split:
    digits = np.zeros((n, 28, 28), np.uint8)
    digits[:, 10:18, 11:17] = 255  # an 8x6 block, far from the borders
    c = np.tile([[0, 23]], (n, 1)) if corners else None
    return Split(name, digits[:, None].copy(), np.arange(n) % 10, digits, c, 5 if corners else 0)


def degrade(split: Split, degradation: str, strength: float, seed: int = 0) -> np.ndarray:
    return get_map_source("degraded-oracle", degradation=degradation, strength=strength, seed=seed).generate(split)


def test_degradations_change_the_mask_as_intended():
    split = hand_split()
    mask = (split.digits > 10).astype(np.float32)
    assert get_map_source("degraded-oracle").kind == "annotation"
    for kind in ("none", "blur", "shift", "drop", "decoy", "noise"):
        np.testing.assert_array_equal(degrade(split, kind, 0.0), mask)

    blur = degrade(split, "blur", 1.5)
    assert blur.max() < 1 and blur[:, 8, 14].min() > 0 and blur.sum() == pytest.approx(mask.sum(), rel=1e-4)

    shifted = degrade(split, "shift", 3)
    for m, s in zip(mask, shifted):
        assert s.sum() == m.sum()
        (y0, x0), (y1, x1) = np.argwhere(m).mean(0), np.argwhere(s).mean(0)
        assert 2 <= math.hypot(y1 - y0, x1 - x0) <= 4.3

    dropped = degrade(split, "drop", 0.5)
    assert (dropped <= mask).all() and (dropped.sum((1, 2)) == 24).all()  # half of 48 pixels

    decoy = degrade(split, "decoy", 1.0)
    np.testing.assert_array_equal(decoy, np.maximum(mask, split.decoy_masks()))
    no_corners = degrade(hand_split(corners=False), "decoy", 1.0)
    assert ((no_corners - mask).sum((1, 2)) == 25).all()  # a 5x5 square in some corner

    many = hand_split(50)
    flipped = degrade(many, "noise", 0.1) != (many.digits > 10)
    assert flipped.mean() == pytest.approx(0.1, abs=0.01)


def test_degradations_are_keyed_by_image_and_seed():
    split = hand_split(8)
    for kind, s in (("shift", 4), ("drop", 0.4), ("noise", 0.2), ("decoy", 0.5)):
        full = degrade(split, kind, s)
        idx = np.array([6, 1, 3])
        np.testing.assert_array_equal(degrade(split.subset(idx), kind, s), full[idx])
        assert not np.array_equal(degrade(split, kind, s, seed=1), full)
    with pytest.raises(L2LError, match="unknown degradation"):
        get_map_source("degraded-oracle", degradation="smear")
    with pytest.raises(L2LError, match=r"\[0, 1\]"):
        get_map_source("degraded-oracle", degradation="drop", strength=1.5)


def test_map_options_are_part_of_the_run_identity(tmp_path):
    a, b = (TrainConfig(maps="degraded-oracle", map_options={"degradation": "blur", "strength": s}) for s in (1.0, 2.0))
    assert train_mod.run_dir_for(resolve(a), tmp_path) != train_mod.run_dir_for(resolve(b), tmp_path)


def test_map_quality_on_hand_cases():
    split = hand_split()
    mask = (split.digits > 10).astype(np.float32)
    assert map_quality(mask, split) == {"iou": 1.0, "auroc": 1.0, "n_images": 4}
    inverted = map_quality(1 - mask, split)
    assert inverted["iou"] == 0.0 and inverted["auroc"] == 0.0
    half = mask.copy()
    half[:, 10:14] = 0  # the top 4 of the 8 rows
    assert map_quality(half, split)["iou"] == pytest.approx(0.5)
    with pytest.raises(L2LError, match="training images only"):
        map_quality(mask, hand_split(name="test"))


# ---- aggregation ----------------------------------------------------------------------

def fake_record(group: str, seed: int, acc: float, method: str = "vanilla", dataset: str = "decoymnist",
                maps: dict | None = None, role: str = "method", lambda0: float | None = None,
                val_acc: float = 99.0, **config) -> Record:
    """A finished run as a record holds it: lambda0 resolved (vanilla's 0), 10 classes;
    ``config`` sets other fields of its TrainConfig."""
    test = TestMetrics(accuracy=acc, cam_on_digit=0.5, grad_on_digit=0.4, kl_to_oracle=1.0, n=10_000)
    lam = lambda0 if lambda0 is not None else 0.0 if method == "vanilla" else 100.0
    return Record(run_dir=Path(f"/runs/{group}/seed{seed}"), role=role,
                  config=TrainConfig(dataset=dataset, method=method, seed=seed, lambda0=lam, **config),
                  maps=MapsInfo.from_result(maps or {"name": "none", "kind": "none"}), test=test,
                  history=({"epoch": 0, "val_acc": val_acc},), selected_epoch=0, seconds_per_epoch=1.0,
                  wall_seconds=10.0, device="cpu", environment={}, num_classes=10)


def test_curve_bands_over_seeds_of_unequal_length_by_hand():
    from learning_to_look.analysis.figures import band_stats

    mean, std = band_stats([[1.0, 3.0, 5.0], [3.0, 5.0]])  # the second seed stopped after 2 epochs
    assert mean.tolist() == [2.0, 4.0, 5.0]
    assert std == pytest.approx([2 ** 0.5, 2 ** 0.5, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an epoch where a metric is undefined for every seed warns nothing
        mean, _ = band_stats([[1.0, math.nan], [3.0, math.nan]])
    assert mean[0] == 2.0 and math.isnan(mean[1])


def test_curves_of_vanilla_runs_alone_warn_nothing():
    """Vanilla has no alignment KL: its empty panel gets no legend, and no matplotlib warning."""
    from learning_to_look.analysis.figures import curves

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = curves(aggregate([fake_record("van", s, 97.0) for s in range(2)]))
    assert fig is not None and fig.axes[0].get_legend() is not None and fig.axes[1].get_legend() is None


def test_mean_std_and_aggregation():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    records = [fake_record("b", 0, 90.0, method="rrr"), fake_record("a", 1, 60.0), fake_record("a", 0, 50.0)]
    rows = aggregate(records, runs_dir="/runs")
    attach_published(rows, PUBLISHED)
    assert [(r.method, r.n_seeds, r.seeds, r.run_group) for r in rows] == [("rrr", 1, [0], "b"),
                                                                            ("vanilla", 2, [0, 1], "a")]
    assert rows[1].test_acc_mean == 55.0 and rows[1].test_acc_std == pytest.approx(math.sqrt(50))
    assert rows[1].published_acc == 60.1 and "CDEP" in rows[1].published_source
    assert rows[0].published_acc == 99.0
    assert [r.method for r in aggregate(records[::-1])] == [r.method for r in rows]  # order-free


def test_a_published_baseline_sits_beside_the_row_with_its_annotation():
    oracle, decoy = {"name": "oracle", "kind": "annotation"}, {"name": "not-decoy", "kind": "annotation"}
    rows = aggregate([fake_record("o", 0, 80.0, method="rrr", maps=oracle),
                      fake_record("d", 0, 97.0, method="rrr", maps=decoy)], runs_dir="/runs")
    attach_published(rows, PUBLISHED)  # CDEP's RRR was told the decoy square is irrelevant
    assert {r.maps.name: r.published_acc for r in rows} == {"oracle": None, "not-decoy": 99.0}
    attach_published(rows[:1] if rows[0].maps.name == "oracle" else rows[1:], PUBLISHED)  # no such row: the next best
    assert next(r for r in rows if r.maps.name == "oracle").published_acc == 99.0


def test_verdict_difference_interval_and_effect():
    oracle = {"name": "oracle", "kind": "annotation"}
    records = [fake_record("van", s, acc) for s, acc in enumerate([50.0, 52.0, 48.0])]
    records += [fake_record("l2l", s, acc, method="l2l", maps=oracle) for s, acc in enumerate([80.0, 82.0, 78.0])]
    records += [fake_record("rrr", s, acc, method="rrr", maps=oracle) for s, acc in enumerate([49.0, 53.0, 50.0])]
    records += [fake_record("int", s, acc, method="l2l", maps={"name": "intensity", "kind": "image-statistic"},
                            role="control") for s, acc in enumerate([30.0, 31.0, 29.0])]
    verdict = {(v["method"], v["maps"]): v for v in verdict_rows(aggregate(records))}
    helps = verdict[("l2l", "oracle (annotation)")]
    half = 2.776445 * (4 / 3 + 4 / 3) ** 0.5  # t(0.975, 4 df) x the standard error: both sides' variance is 4
    assert helps["diff"] == 30.0 and helps["effect"] == "helps"
    assert (helps["low"], helps["high"]) == pytest.approx((30.0 - half, 30.0 + half), abs=1e-5)
    assert verdict[("rrr", "oracle (annotation)")]["effect"] == "no clear effect"
    assert verdict[("l2l", "intensity (image-statistic)")]["effect"] == "hurts"
    assert all(v["baseline"] == "vanilla" and v["baseline_n"] == 3 for v in verdict.values())
    two = verdict_rows(aggregate(records[:2] + records[3:5]))
    assert two[0]["effect"] == "too few seeds to tell" and two[0]["diff"] == 30.0


def test_a_collapsed_model_or_a_gain_near_chance_is_not_help_and_a_mapless_penalty_is_guided():
    """ColorMNIST's shifted test: vanilla is below chance, so a one-class model (eg) or
    a model still below or near chance (l2l, rrr) beats it without learning the digit; cdep's colour
    penalty uses no maps but is a guided method, never the baseline."""
    records = [fake_record("van", s, acc, dataset="colormnist") for s, acc in enumerate([0.0, 0.1, 0.0])]
    oracle = {"name": "oracle", "kind": "annotation"}
    records += [fake_record("eg", s, acc, method="eg", dataset="colormnist", maps=oracle, val_acc=11.0)
                for s, acc in enumerate([12.0, 11.0, 13.0])]
    records += [fake_record("l2l", s, acc, method="l2l", dataset="colormnist", maps=oracle)
                for s, acc in enumerate([5.0, 7.0, 6.0])]
    records += [fake_record("cdep", s, acc, method="cdep", dataset="colormnist", lambda0=1000.0)
                for s, acc in enumerate([30.0, 31.0, 32.0])]
    records += [fake_record("rrr", s, acc, method="rrr", dataset="colormnist", maps=oracle)
                for s, acc in enumerate([12.0, 13.0, 14.0])]  # learned in-distribution, near chance on test
    rows = aggregate(records)
    every = verdict_rows(rows)
    verdict = {v["method"]: v for v in every}
    assert [v["baseline"] for v in every] == ["vanilla"] * 4 and set(verdict) == {"eg", "l2l", "cdep", "rrr"}
    assert verdict["eg"]["collapsed"] and verdict["eg"]["effect"].startswith("collapsed (validation accuracy 11.0 %")
    assert verdict["l2l"]["low"] > 0 and verdict["l2l"]["effect"].startswith("no real gain")
    near = "no real gain: still near chance (test 13.0 %, chance 10 %)"
    assert verdict["rrr"]["low"] > 0 and verdict["rrr"]["effect"] == near
    assert verdict["cdep"]["effect"] == "helps" and verdict["cdep"]["lambda0"] == 1000.0
    (line,) = verdict_summary(rows, [v for v in verdict.values() if v["method"] not in ("cdep", "rrr")])
    assert line["best"]["method"] == "l2l"  # eg's higher mean is a collapsed model


def test_verdict_summary_one_line_per_setting_with_bound_best_and_note():
    oracle = {"name": "oracle", "kind": "annotation"}
    records = [fake_record("van", s, acc) for s, acc in enumerate([50.0, 52.0, 48.0])]
    records += [fake_record("l2l", s, acc, method="l2l", maps=oracle) for s, acc in enumerate([60.0, 62.0, 58.0])]
    records += [fake_record("rrr", s, acc, method="rrr", maps={"name": "not-decoy", "kind": "annotation"})
                for s, acc in enumerate([90.0, 91.0, 89.0])]
    records += [fake_record("bound", s, 99.0, dataset="mnist", role="upper-bound") for s in range(2)]
    rows = aggregate(records)
    (line,) = verdict_summary(rows, verdict_rows(rows), ["l2l"], {"decoymnist": "why"})
    assert (line["baseline_acc_mean"], line["bound_acc_mean"], line["bound_n"]) == (50.0, 99.0, 2)
    assert line["best"]["method"] == "rrr" and line["best"]["diff"] == 40.0 and line["effect"] == "helps"
    assert line["l2l_oracle"]["method"] == "l2l" and line["l2l_oracle"]["diff"] == 10.0
    assert line["note"] == "why"
    one_seed = [fake_record("rrr1", 0, 95.0, method="rrr", maps={"name": "not-decoy", "kind": "annotation"},
                            lambda0=10.0)]
    rows = aggregate(records + one_seed)
    assert verdict_summary(rows, verdict_rows(rows))[0]["best"]["lambda0"] == 100.0  # one seed gives no verdict
    bare = verdict_summary(rows, verdict_rows(rows))[0]
    assert bare["note"] == "" and bare["l2l_oracle"] is None
    assert bare["effect"] == "helps (the best of 3 runs compared)"  # no comparison fixed in advance: said so
    blurred = [fake_record("blur", s, 99.5, method="l2l", maps={"name": "degraded-oracle", "kind": "annotation"},
                           role="sensitivity") for s in range(3)]
    rows = aggregate(records + blurred)
    (line,) = verdict_summary(rows, verdict_rows(rows), ["l2l"])
    assert line["best"]["method"] == "rrr" and line["effect"] == line["l2l_oracle"]["effect"]  # no degraded maps


def test_welch_interval_and_t_quantiles_by_hand():
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)  # printed t tables
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-5)
    assert stats.t_quantile(0.995, 10) == pytest.approx(3.169273, abs=1e-6)
    # equal sizes and variances: Welch's degrees of freedom are 2(n - 1) = 4
    diff, low, high = stats.welch_diff([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    half = 2.776445 * (2 / 3) ** 0.5
    assert (diff, low, high) == pytest.approx((-2.0, -2.0 - half, -2.0 + half))
    # unequal: se^2 = 1/3 + 2/2, df = se^4 / ((1/3)^2 / 2 + 1^2 / 1) = 1.684...
    diff, low, high = stats.welch_diff([1.0, 2.0, 3.0], [4.0, 6.0])
    df = (4 / 3) ** 2 / ((1 / 3) ** 2 / 2 + 1.0)
    assert high - diff == pytest.approx(stats.t_quantile(0.975, df) * (4 / 3) ** 0.5)
    assert 4.303 * (4 / 3) ** 0.5 < high - diff < 12.71 * (4 / 3) ** 0.5  # between 2 and 1 degrees of freedom
    assert math.isnan(stats.welch_diff([1.0], [2.0, 3.0])[1])  # one seed: its spread is unknown


def test_a_setting_bites_when_vanilla_falls_15_points_below_the_clean_bound_of_its_network():
    """Only unguided runs enter, each against the MNIST bound of the same network and
    schedule; the rule needs 3 seeds on each side."""
    records = [fake_record("dm", s, acc) for s, acc in enumerate([50.0, 52.0, 48.0])]
    records += [fake_record("drr", s, acc, dataset="decoymnist-rrr") for s, acc in enumerate([86.0, 85.0, 84.0])]
    records += [fake_record("cm", s, 0.0, dataset="colormnist") for s in range(2)]
    records += [fake_record("bound", s, 99.0, dataset="mnist", role="upper-bound") for s in range(3)]
    records += [fake_record("rrr", s, 98.0, method="rrr", maps={"name": "not-decoy", "kind": "annotation"})
                for s in range(3)]
    records += [fake_record("cnn", s, 40.0, backbone="cdep-cnn") for s in range(3)]  # no bound of its network
    records += [fake_record("shapes", s, 50.0, dataset="shapes-bg") for s in range(3)]  # not digits: no MNIST bound
    bites = {b["dataset"]: b for b in bite_rows(aggregate(records))}
    assert set(bites) == {"decoymnist", "decoymnist-rrr", "colormnist"}
    assert all(b["backbone"] == "lenet-gap" and b["baseline"] == "vanilla" for b in bites.values())
    dm, drr = bites["decoymnist"], bites["decoymnist-rrr"]
    assert (dm["gap"], dm["bound_n"], dm["bites"]) == (49.0, 3, "yes") and dm["low"] <= 49.0 <= dm["high"]
    assert (drr["gap"], drr["bites"]) == (14.0, "no")
    assert bites["colormnist"]["bites"] == "too few seeds to tell"


def test_a_runs_role_is_read_from_what_it_computed(tmp_path, monkeypatch):
    """`l2l train` records every run as a method; the report reads the same run as a profile
    would name it, so a bound or a degraded-map run trained alone still counts as one."""
    from learning_to_look.analysis import records as rec_mod

    def on(maps: str, record: Record) -> Record:  # the config's map source (fake_record's maps= is the record's)
        return dataclasses.replace(record, config=dataclasses.replace(record.config, maps=maps))

    cases = [(fake_record("b", 0, 99.0, dataset="mnist"), "upper-bound"),
             (fake_record("ci", 0, 88.0, dataset="colormnist", input_transform="colour-invariant"), "upper-bound"),
             (on("degraded-oracle", fake_record("bl", 0, 97.0, method="gradcam-kl")), "sensitivity"),
             (on("intensity", fake_record("in", 0, 85.0, method="l2l")), "control"),
             (fake_record("rrr", 0, 99.0, method="rrr", dataset="mnist"), "method"),  # guided on MNIST: no bound
             (fake_record("sw", 0, 99.0, dataset="mnist", role="sweep"), "sweep"),  # a search point stays one
             (fake_record("v", 0, 45.0), "method")]
    assert [rec_mod.comparison_role(r) for r, _ in cases] == [role for _, role in cases]
    for i, _ in enumerate(cases):
        (tmp_path / "d" / f"g{i}" / "seed0").mkdir(parents=True)
        (tmp_path / "d" / f"g{i}" / "seed0" / "result.json").write_text("{}")
    by_dir = {tmp_path / "d" / f"g{i}" / "seed0": r for i, (r, _) in enumerate(cases)}
    monkeypatch.setattr(rec_mod, "read_record", lambda d: by_dir[Path(d)])
    assert [r.role for r in rec_mod.collect(tmp_path)] == [role for _, role in cases]


def test_a_test_model_is_never_labelled_a_vlm():
    fake = MapsInfo.from_result({"name": "clip", "kind": "vlm", "real_vlm": False, "config": {"variant": "naclip"}})
    assert fake.display_kind != "vlm" and "(vlm)" not in fake.label and "not a VLM" in fake.label
    real = MapsInfo.from_result({"name": "clip", "kind": "vlm", "real_vlm": True, "config": {"variant": "naclip"}})
    assert real.display_kind == "vlm" and real.label == "clip/naclip (vlm)"
    assert MapsInfo.from_result({"name": "oracle", "kind": "annotation"}).label == "oracle (annotation)"


def test_collect_reads_records_and_skips_broken_ones(tmp_path, capsys):
    good = tmp_path / "decoymnist" / "g" / "seed0"
    good.mkdir(parents=True)
    result = {"config": TrainConfig(dataset="decoymnist", method="vanilla", seed=0).to_dict(), "role": "upper-bound",
              "maps": {"name": "none", "kind": "none"}, "selection": {"epoch": 1},
              "test": {"accuracy": 97.5, "cam_on_digit": 0.5, "grad_on_digit": 0.4, "kl_to_oracle": 1.0, "n": 10},
              "history": [{"epoch": 0, "phase": "ce", "val_acc": 90.0}, {"epoch": 1, "phase": "ce", "val_acc": 95.0}],
              "seconds_per_epoch": 1.0, "wall_seconds": 2.0, "device": "cpu"}
    (good / "result.json").write_text(json.dumps(result))
    broken = tmp_path / "decoymnist" / "b" / "seed0"
    broken.mkdir(parents=True)
    (broken / "result.json").write_text("{not json")
    records = collect(tmp_path)
    assert len(records) == 1 and "skipping" in capsys.readouterr().err
    r = records[0]
    assert (r.role, r.config.method, r.test.accuracy, r.selected_epoch) == ("upper-bound", "vanilla", 97.5, 1)
    assert r.curve("val_acc") == [90.0, 95.0] and r.curve("val_kl") is None and r.joint_from is None
    assert r.examples() is None and r.test.cam_on_decoy is None


# ---- the command end to end -------------------------------------------------------------

def test_profiles_are_well_formed():
    for name, profile in rep.PROFILES.items():
        if profile.data:  # trains on an import: planned on its fixture in test_worst_group_profiles.py
            continue
        jobs = planned(profile)
        assert jobs and all(cfg.lambda0 is not None and cfg.selection for _, cfg in jobs), name  # resolved
        assert len({train_mod.run_dir_for(cfg) for _, cfg in jobs}) == len(jobs), name  # no run twice
    assert rep.PROFILES["full"].seeds == [0, 1, 2, 3, 4]
    with_vlm = planned(rep.PROFILES["quick"], vlm="some/clip")
    assert sum(c.role == "vlm" for c, _ in with_vlm) == 2


def test_the_cdep_profile_trains_each_data_set_as_cdeps_own_code_did():
    """CDEP's published numbers come from Adam at torch's default rate: one epoch at batch
    256 with weight decay 1e-3 on ColorMNIST, five at batch 64 with 1e-4 on DecoyMNIST."""
    jobs = planned(rep.PROFILES["baselines-cdep"])
    seen = {(cfg.dataset, cfg.schedule, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.momentum)
            for _, cfg in jobs}
    assert seen == {("colormnist", "cdep-colormnist", 1, 256, 1e-3, 1e-3, None),
                    ("decoymnist", "cdep-decoymnist", 5, 64, 1e-3, 1e-4, None)}
    assert len(jobs) == 40 and {cfg.backbone for _, cfg in jobs} == {"cdep-cnn"}
    assert {cfg.maps for _, cfg in jobs if cfg.dataset == "decoymnist" and cfg.method != "vanilla"} == {"not-decoy"}


def test_cells_that_resolve_to_one_run_are_planned_once():
    twice = [rep.Cell("decoymnist", "vanilla", maps="oracle"), rep.Cell("decoymnist", "vanilla", maps="intensity")]
    profile = dataclasses.replace(rep.PROFILES["quick"], cells=twice, sensitivity=rep.Sensitivity())
    jobs = planned(profile, seeds=[0, 1])
    assert [(cfg.maps, cfg.seed) for _, cfg in jobs] == [("none", 0), ("none", 1)]


def test_plan_lists_runs_and_times_them_by_finished_seeds_without_building_anything(tmp_path, capsys):
    runs = tmp_path / "runs"
    jobs = planned(rep.PROFILES["quick"], seeds=[0, 1])
    first = train_mod.run_dir_for(jobs[0][1], runs)  # seed 0 of the first configuration: finished in 2 h
    finished_run(first, jobs[0][1], 7200.0)
    # a run of rrr on a data set the profile does not train: times the profile's rrr runs, 1 h each
    rrr = next(cfg for _, cfg in jobs if cfg.method == "rrr")
    elsewhere = runs / "elsewhere" / "rrr-run" / "seed0"
    finished_run(elsewhere, dataclasses.replace(rrr, dataset="elsewhere"), 3600.0)
    fields = ("method", "backbone", "schedule", "train_subset", "epochs")

    def same_cost(a, b):
        return all(getattr(a, f) == getattr(b, f) for f in fields) and (a.maps == "none") == (b.maps == "none")

    group = train_mod.run_dir_for(jobs[0][1], runs).parent
    rest = [cfg for _, cfg in jobs[1:] if train_mod.run_dir_for(cfg, runs).parent != group]
    hours = [2.0 if same_cost(cfg, jobs[0][1]) else 1.0 for cfg in rest
             if same_cost(cfg, jobs[0][1]) or same_cost(cfg, rrr)]  # the finished vanilla's 2 h, the rrr's 1 h
    # the others in vanilla's setting: its 1 h per epoch times their epochs and their method's cost per epoch
    setting = ("backbone", "schedule", "train_subset")
    scaled = [cfg.epochs * METHODS.get(cfg.method).epoch_cost for cfg in rest
              if not (same_cost(cfg, jobs[0][1]) or same_cost(cfg, rrr))
              and all(getattr(cfg, f) == getattr(jobs[0][1], f) for f in setting)]
    code = main(["reproduce", "--quick", "--seeds", "0,1", "--plan", "--runs-dir", str(runs),
                 "--data-dir", str(tmp_path / "data")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == len(jobs) + 1 and not (tmp_path / "data").exists()
    assert lines[0].endswith(": cached") and sum(line.endswith(": to train") for line in lines) == len(jobs) - 1
    assert 1.0 in hours and 2.0 in hours and scaled and len(rest) == len(jobs) - 2
    unknown = len(rest) - len(hours) - len(scaled)
    assert lines[-1] == (f"{len(jobs)} runs: 1 cached, {len(jobs) - 1} to train; about 2.0 h of one-thread run time "
                         f"for the 1 with a finished seed of the same configuration; about {sum(hours):.1f} h for "
                         f"the {len(hours)} timed by finished runs of the same method, network, schedule and "
                         f"training-set size on other data or maps; about {sum(scaled):.1f} h for the {len(scaled)} "
                         "timed by vanilla's finished runs in the same setting times the method's measured cost per "
                         "epoch" + (f"; {unknown} with nothing to time them by" if unknown else ""))


def reproduce_args(tmp_path, data_dir):
    return ["reproduce", "--quick", "--quiet", "--out", str(tmp_path / "report"), "--runs-dir", str(tmp_path / "runs"),
            "--data-dir", str(data_dir)]


@pytest.fixture
def small_test_split(monkeypatch):
    """Evaluating 10,000 test images is most of a tiny run's time; the engine's own tests
    cover it, so here the test split is cut to its first 2,000 images."""
    real = train_mod.load_dataset

    def load(*a, **kw):
        ds = real(*a, **kw)
        return dataclasses.replace(ds, test=ds.test.subset(np.arange(2000)))

    monkeypatch.setattr(train_mod, "load_dataset", load)


def test_quick_end_to_end_interrupted_resumed_then_cached(tmp_path, data_dir, monkeypatch, capsys, small_test_split):
    args = reproduce_args(tmp_path, data_dir)
    jobs = planned(rep.PROFILES["quick"])
    real_run, real_fit = train_mod.run_resolved, train_mod.fit
    calls = []

    class Killed(Exception):
        pass

    def kill(row):
        raise Killed

    def killed_in_second_run(cfg, **kw):
        calls.append(cfg)
        return real_run(cfg, **kw, **({"on_epoch": kill} if len(calls) == 2 else {}))

    monkeypatch.setattr(train_mod, "run_resolved", killed_in_second_run)
    with pytest.raises(Killed):  # the process dies after the first epoch of the second run
        main(args)
    capsys.readouterr()
    first = train_mod.run_dir_for(jobs[0][1], tmp_path / "runs")
    second = train_mod.run_dir_for(jobs[1][1], tmp_path / "runs")
    stamp = (first / "result.json").stat().st_mtime_ns
    assert (second / "checkpoint.pt").exists() and not (second / "result.json").exists()

    fits = []
    monkeypatch.setattr(train_mod, "run_resolved", real_run)
    monkeypatch.setattr(train_mod, "fit", lambda *a, **kw: fits.append(kw["checkpoint"].exists()) or real_fit(*a, **kw))
    assert main(args) == 0
    assert len(fits) == len(jobs) - 1 and fits[0]  # the first run reused, the second resumed from its checkpoint
    assert (first / "result.json").stat().st_mtime_ns == stamp
    out = capsys.readouterr().out
    assert rep.NO_VLM_LINE in out and out.count(" seed 0: test acc ") == len(jobs)

    def no_training(*a, **kw):
        raise AssertionError("a rerun with the same settings must not train")

    monkeypatch.setattr(train_mod, "fit", no_training)
    assert main(args) == 0
    assert f"0 runs trained, {len(jobs)} cached" in capsys.readouterr().out

    report = tmp_path / "report"
    md = (report / "report.md").read_text()
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    results = json.loads((report / "results.json").read_text())
    measured = [r for r in rows if r["origin"] == "measured"]
    published = [r for r in rows if r["origin"] == "published"]
    assert len(measured) == len(results["rows"]) == len({train_mod.run_dir_for(c, tmp_path) for _, c in jobs})
    assert all(not Path(r["run_group"]).is_absolute() for r in measured)  # relative to the runs folder
    assert len(published) == 2 * len(PUBLISHED)
    assert {r["maps_kind"] for r in measured} <= {"none", "annotation", "image-statistic"}
    assert "Published numbers (not measured here)" in md and "no number in this report comes from VLM maps" in md
    for p in PUBLISHED:
        assert f"| {p['label']} | ColorMNIST | {p['colormnist']} |" in md
        assert f"| {p['label']} | DecoyMNIST | {p['decoymnist']} |" in md
    assert {"upper-bound", "control", "sensitivity"} <= {r["role"] for r in measured}
    assert all(float(r["test_acc_mean"]) >= 0 and r["n_seeds"] == "1" for r in measured)
    assert [s["degradation"] for s in results["sensitivity"]] == ["none", "drop", "shift"]
    assert results["shared_settings"] == {"shared": {"train_subset": 500, "epochs": 2, "e_att": 1},
                                          "varying": ["input_transform"]}  # the colour-invariant bound
    assert {b["dataset"] for b in results["shortcut_bites"]} == {"colormnist", "decoymnist"}
    assert "## Where does the shortcut bite?" in md and "## Verdict: does alignment help?" in md
    for name in FIGURES:
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # `l2l report` rebuilds the same tables from the runs folder alone: nothing trains, nothing is loaded.
    monkeypatch.setattr(train_mod, "prepare", no_training)
    monkeypatch.setattr(train_mod, "load_dataset", no_training)
    again = tmp_path / "again"
    assert main(["report", str(tmp_path / "runs"), "--out", str(again)]) == 0
    assert (again / "results.csv").read_text() == (report / "results.csv").read_text()
    body = lambda p: p.read_text().split("\n", 3)[3]  # noqa: E731  (all but the title lines)
    assert body(again / "report.md") == body(report / "report.md")
    for name in FIGURES:
        assert (again / name).exists(), name


def test_usage_errors_are_one_line(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "fit", lambda *a, **kw: pytest.fail("nothing may train"))
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert main(reproduce_args(tmp_path, data_dir) + ["--full"]) == 2
    assert main(reproduce_args(tmp_path, data_dir) + ["--seeds", "1,1"]) == 2
    assert main(reproduce_args(tmp_path, data_dir) + ["--vlm", "openai/clip-vit-base-patch16"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 5 and "Traceback" not in err
