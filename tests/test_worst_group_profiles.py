"""The worst-group profiles: waterbirds and redmeat on their fixtures at tiny size, and the shapes-bg table's plan."""

import dataclasses

import pytest

from learning_to_look.cli import main
from learning_to_look.training.reproduce import PROFILES, describe_plan, plan, reproduce

from worst_group_fixtures import make_redmeat, make_waterbirds


def tiny(name):
    """The profile on LeNet-GAP from scratch, one seed, 2 epochs: the same methods, schedule and selection."""
    prof = PROFILES.get(name)
    return dataclasses.replace(prof, seeds=[0], run={**prof.run, "pretrained": None, "epochs": 2},
                               cells=[dataclasses.replace(c, backbone="lenet-gap") for c in prof.cells])


@pytest.mark.parametrize("name,make,methods", [
    ("waterbirds", lambda p: make_waterbirds(p), {"vanilla", "upweight", "groupdro", "jtt", "dfr", "afr"}),
    ("redmeat", lambda p: make_redmeat(p), {"vanilla", "upweight", "jtt", "afr"}),
])
def test_a_profile_runs_on_its_fixture(name, make, methods, tmp_path):
    lines = []
    summary = reproduce(tiny(name), data_root=make(tmp_path / "raw"), data_dir=tmp_path / "data",
                        runs_dir=tmp_path / "runs", out=tmp_path / "report", progress=False, echo=lines.append)
    assert summary["failed"] == [] and summary["trained"] == len(methods)
    assert any(f"data {name}: imported" in line for line in lines)
    assert {r["method"] for r in summary["rows"]} == methods
    assert all(run["config"]["selection"] == "val_balanced" for run in summary["runs"])
    if name == "waterbirds":  # groups: the worst-group section with both averages and the verdict column
        assert {r["method"] for r in summary["worst_group"]} == methods
        assert "## Worst-group accuracy" in (tmp_path / "report" / "report.md").read_text()


def test_profiles_on_imported_data_need_it(tmp_path, capsys):
    assert main(["reproduce", "--profile", "waterbirds", "--plan", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-root" in err and "--format waterbirds" in err


def test_the_shapes_table_plans_every_method_beside_vanilla_and_l2l(shapes_dir, tmp_path):
    jobs = plan(PROFILES.get("worst-group-shapes"), data_dir=shapes_dir)
    assert len(jobs) == 35
    assert {run.cfg.method for _, run in jobs} == {"vanilla", "l2l", "upweight", "groupdro", "jtt", "dfr", "afr"}
    assert describe_plan(PROFILES.get("worst-group-shapes"), runs_dir=tmp_path, data_dir=shapes_dir)[-1].startswith(
        "35 runs: 0 cached, 35 to train")
