"""`l2l sweep`: grid parsing, records, validation-only choice, resuming, bad input."""

from __future__ import annotations

import json

import pytest

from learning_to_look.training import sweep as sweep_mod
from learning_to_look.cli import main
from learning_to_look.config import TrainConfig
from learning_to_look.errors import L2LError
from learning_to_look.analysis.records import collect
from learning_to_look.analysis.verdicts import sweep_summary
from learning_to_look.training.stacked import NoModel
from learning_to_look.training.sweep import choose, parse_grid, plan_sweep, run_sweep


def test_parse_grid_ranges_and_lists():
    assert parse_grid("lambda0=100:300:50") == ("lambda0", [100.0, 150.0, 200.0, 250.0, 300.0])
    assert parse_grid("e_att=5:9:2") == ("e_att", [5, 7, 9])
    assert parse_grid("e-att=3") == ("e_att", [3])
    assert parse_grid("lr=0.1:0.3:0.1") == ("lr", [0.1, 0.2, 0.3])
    assert parse_grid("phase1=attention,ce") == ("phase1", ["attention", "ce"])


@pytest.mark.parametrize("bad", ["lambda0", "seed=0:4:1", "epochs=1:3:1", "lambda0=1:5:0", "lambda0=5:1:1",
                                 "lambda0=", "e_att=1.5", "lambda0=1,1", "lambda0=a:b:c"])
def test_malformed_grids_are_one_line_errors(bad):
    with pytest.raises(L2LError, match="malformed --grid"):
        parse_grid(bad)


def test_a_value_the_config_rejects_fails_before_training(tmp_path):
    base = TrainConfig(dataset="decoymnist", method="l2l", epochs=3, e_att=1)
    with pytest.raises(L2LError, match="lambda0"):
        plan_sweep(base, {"lambda0": [-1.0]}, [0], tmp_path)
    with pytest.raises(L2LError, match="E_att"):
        plan_sweep(base, {"e_att": [1, 3]}, [0], tmp_path)
    with pytest.raises(L2LError, match="cannot be stacked"):
        plan_sweep(TrainConfig(method="rrr"), {"lambda0": [1.0]}, [0], tmp_path)


def test_sweep_end_to_end_records_choice_and_resume(tmp_path, data_dir, monkeypatch):
    base = TrainConfig(dataset="decoymnist", method="l2l", epochs=2, e_att=1, train_subset=120)
    plan = plan_sweep(base, {"lambda0": [1.0, 2.0, 4.0]}, [0, 1], tmp_path)
    summary = run_sweep(plan, max_stack=2, data_dir=data_dir, progress=False, echo=lambda _: None)
    records = collect(plan.folder)
    assert len(records) == 6 and {r.config.lambda0 for r in records} == {1.0, 2.0, 4.0}
    result = json.loads((records[0].run_dir / "result.json").read_text())
    assert result["engine"]["name"] == "stacked" and {"test", "history", "selection"} <= set(result)
    best = max(summary["points"], key=lambda p: p["val_score_mean"])
    assert summary["chosen"] == best["point"] and len(summary["points"]) == 3

    # The optimistic bound: written after the choice, from every epoch's weights, at least
    # the selected epoch's test accuracy for every run, and kept apart from the records.
    bound = json.loads((plan.folder / "optimistic_bound.json").read_text())
    written = {name: (plan.folder / f"{name}.json").stat().st_mtime_ns for name in ("selection", "optimistic_bound")}
    assert written["optimistic_bound"] >= written["selection"]
    assert bound["runs_with_saved_weights"] == 6 and "NOT A RESULT" in bound["label"]
    for point in bound["points"]:
        recorded = [r.test.accuracy for r in sorted(records, key=lambda r: r.config.seed)
                    if r.config.lambda0 == point["point"]["lambda0"]]  # seeds 0, 1 as the bound lists them
        assert all(b >= a - 0.05 for a, b in zip(recorded, point["best_test_acc"], strict=True))
        assert set(point["epochs"]) <= {1}  # epoch 0 is phase 1 at E_att = 1: never eligible

    # The choice never reads the test split: rewrite every test accuracy and choose again.
    for r in records:
        path = r.run_dir / "result.json"
        doc = json.loads(path.read_text())
        doc["test"]["accuracy"] = 100.0 - doc["test"]["accuracy"] if doc["config"]["lambda0"] != 2.0 else -5.0
        path.write_text(json.dumps(doc))
    assert choose(plan)["chosen"] == summary["chosen"]

    # A second call trains nothing.
    monkeypatch.setattr(sweep_mod, "fit_stacked", lambda *a, **k: pytest.fail("retrained a finished sweep"))
    run_sweep(plan, data_dir=data_dir, progress=False, echo=lambda _: None)

    # `l2l report` on the sweep folder adds the sweep's answer and its figure. Grid points
    # are rows of role "sweep", named by their point, and none stands beside a published number.
    assert main(["report", str(plan.folder), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Sweep" in md and "Optimistic bound (test-peeking; not a result)" in md
    assert "l2l (λ0 2, E_att 1" in md
    paper_row = [line for line in md.splitlines() if "| 96.19 |" in line]  # the published l2l DecoyMNIST row
    assert paper_row and all("not run here" in line for line in paper_row)
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "NOT A RESULT" not in json.dumps(results)
    assert {r.role for r in records} == {"sweep"}
    assert (tmp_path / "report" / "sweep.png").stat().st_size > 0


def test_a_rerun_after_a_kill_forms_the_same_stacks_and_rewrites_nothing(tmp_path, data_dir, monkeypatch):
    """Stacks are cut at fixed places of the grid: a record missing from the first stack
    (killed while writing its records) brings back that stack alone, and the records
    already written stay as they were; the optimistic bound is read from each stack's cache."""
    base = TrainConfig(dataset="decoymnist", method="l2l", epochs=2, e_att=1, train_subset=120)
    plan = plan_sweep(base, {"lambda0": [1.0, 2.0, 4.0]}, [0], tmp_path)
    run_sweep(plan, max_stack=2, data_dir=data_dir, progress=False, echo=lambda _: None)
    first = [sweep_mod.run_dir_for(c, plan.folder) / "result.json" for c in plan.configs(0)]
    (first[0]).unlink()
    kept = {p: p.stat().st_mtime_ns for p in first[1:]}
    bound = json.loads((plan.folder / "optimistic_bound.json").read_text())
    real, stacks = sweep_mod.fit_stacked, []
    monkeypatch.setattr(sweep_mod, "fit_stacked", lambda cfgs, *a, **k: stacks.append(cfgs) or real(cfgs, *a, **k))
    monkeypatch.setattr(sweep_mod.StackedLeNetGAP, "from_state", lambda *a: pytest.fail("bound not read from cache"))
    run_sweep(plan, max_stack=2, data_dir=data_dir, progress=False, echo=lambda _: None, jobs=1)
    assert [[c.lambda0 for c in cfgs] for cfgs in stacks] == [[1.0, 2.0]]
    assert first[0].exists() and all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert json.loads((plan.folder / "optimistic_bound.json").read_text()) == bound


def test_a_point_whose_loss_diverges_before_it_has_a_model_is_left_out(tmp_path, data_dir, monkeypatch):
    """Its mates' records are written, it gets failed.json, and the choice and the report skip it."""
    real = sweep_mod.fit_stacked

    def lose_lambda_4(cfgs, *a, **k):
        fitted = real(cfgs, *a, **k)
        return [NoModel("loss became NaN in epoch 1", f.history) if c.lambda0 == 4.0 else f
                for c, f in zip(cfgs, fitted)]

    monkeypatch.setattr(sweep_mod, "fit_stacked", lose_lambda_4)
    base = TrainConfig(dataset="decoymnist", method="l2l", epochs=2, e_att=1, train_subset=120)
    plan = plan_sweep(base, {"lambda0": [1.0, 4.0]}, [0], tmp_path)
    summary = run_sweep(plan, max_stack=2, data_dir=data_dir, progress=False, echo=lambda _: None)
    assert [p["point"] for p in summary["points"]] == [{"lambda0": 1.0}] and summary["chosen"] == {"lambda0": 1.0}
    assert [p["point"] for p in summary["left_out"]] == [{"lambda0": 4.0}]
    lost = [sweep_mod.run_dir_for(c, plan.folder) for c in plan.configs(0) if c.lambda0 == 4.0][0]
    assert (lost / "failed.json").exists() and not (lost / "result.json").exists()
    assert main(["report", str(plan.folder), "--out", str(tmp_path / "report")]) == 0
    assert "Left out of the choice (1 grid points" in (tmp_path / "report" / "report.md").read_text()


def test_sweep_summary_counts_runs_reaching_the_published_number():
    selection = {"dataset": "colormnist", "method": "l2l", "axes": {"lambda0": [1.0, 2.0]}, "chosen": {"lambda0": 2.0},
                 "seeds": [0, 1], "test_acc_mean": 50.0, "test_acc_std": 1.0, "val_score_mean": 0.5,
                 "points": [{"point": {"lambda0": 1.0}, "test_acc": [70.0, 10.0]},
                            {"point": {"lambda0": 2.0}, "test_acc": [64.88, 64.87]}]}
    published = [{"method": "l2l", "colormnist": 64.88, "source": "paper"}, {"method": None, "colormnist": 1.0}]
    got = sweep_summary(selection, published)
    assert (got["n_runs"], got["reach_published"], got["published_acc"]) == (4, 2, 64.88)
    assert sweep_summary(selection | {"method": "vanilla"}, published)["reach_published"] is None
    assert sweep_summary(None, published) is None


def test_the_sweep_figure_shows_the_bound_apart_and_labelled():
    """The bound's per-run share is drawn as its own outlined histogram, named what it is;
    a sweep without a bound draws the validation-chosen runs alone."""
    from learning_to_look.analysis.figures import sweep as sweep_figure

    points = [{"point": {"lambda0": v}, "test_acc": [10.0 + v, 12.0 + v]} for v in (1.0, 2.0)]
    summary = {"dataset": "colormnist", "method": "l2l", "axes": {"lambda0": [1.0, 2.0]}, "chosen": {"lambda0": 1.0},
               "points": points, "published_acc": 64.88}
    bound = {"points": [{"point": p["point"], "best_test_acc": [a + 5 for a in p["test_acc"]]} for p in points]}
    labels = [t.get_text() for t in sweep_figure(summary, bound).axes[1].get_legend().get_texts()]
    assert any("optimistic bound, not a result" in t for t in labels) and "published 64.88 %" in labels
    labels = [t.get_text() for t in sweep_figure(summary).axes[1].get_legend().get_texts()]
    assert not any("bound" in t for t in labels)


def test_the_heat_map_names_the_chosen_point_without_a_legend_over_its_cells():
    from learning_to_look.analysis.figures import sweep as sweep_figure

    grid = [(a, b) for a in (1.0, 2.0) for b in (5, 7)]
    points = [{"point": {"lambda0": a, "e_att": b}, "test_acc": [a + b]} for a, b in grid]
    summary = {"dataset": "decoymnist", "method": "l2l", "axes": {"lambda0": [1.0, 2.0], "e_att": [5, 7]},
               "chosen": {"lambda0": 2.0, "e_att": 5}, "points": points, "published_acc": None}
    heat = sweep_figure(summary).axes[0]
    assert heat.get_legend() is None and "red square: chosen on validation" in heat.get_title()
    assert heat.collections[0].get_offsets().tolist() == [[1.0, 0.0]]  # (x index, y index) of the chosen point


@pytest.mark.parametrize("args, message", [
    (["--grid", "gamma=1:2:1"], "malformed --grid"),
    (["--grid", "lambda0=1:3:0"], "malformed --grid"),
    (["--grid", "lambda0=1,2", "--grid", "lambda0=3"], "given twice"),
    (["--grid", "lambda0=1,2", "--max-stack", "0"], "--max-stack"),
    (["--grid", "lambda0=1,2", "--method", "gradcam-kl"], "cannot be stacked"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    method = [] if "--method" in args else ["--method", "l2l"]
    code = main(["sweep", "--dataset", "decoymnist", *method, "--epochs", "2", "--e-att", "1",
                 "--runs-dir", str(tmp_path), *args])
    out, err = capsys.readouterr()
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert out == ""  # nothing said about a sweep that will not run


def test_a_stack_larger_than_memory_is_one_line_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep_mod, "free_bytes", lambda device: 3 * 2**30)  # 3 GiB free
    monkeypatch.setattr(sweep_mod, "fit_stacked", lambda *a, **k: pytest.fail("trained a stack that cannot fit"))
    code = main(["sweep", "--dataset", "decoymnist", "--method", "l2l", "--grid", "lambda0=1:400:1",
                 "--max-stack", "400", "--jobs", "1", "--runs-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2 and "--max-stack 128 or fewer --jobs" in err and len(err.strip().splitlines()) == 1
    assert out == ""
