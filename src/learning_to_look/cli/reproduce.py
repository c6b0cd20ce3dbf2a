"""`l2l reproduce`: the quick start's main command."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ..errors import L2LError
from .app import app
from ..training.reproduce import PROFILES
from .common import DATA_DIR, JOBS, RUNS_DIR, parse_seeds, with_launcher
from ..training.launchers import Launcher


@app.command("reproduce")
@with_launcher
def reproduce(
    quick: bool = typer.Option(False, "--quick", help="Tiny smoke run (minutes; the numbers mean nothing)."),
    full: bool = typer.Option(False, "--full", help="The paper's complete protocol: full data, 5 seeds, every method."),
    profile: Optional[str] = typer.Option(None, "--profile", help=f"{PROFILES.help('default')}. A profile of "
                                          "training/profiles.yaml; --quick and --full name two of them."),
    seeds: Optional[str] = typer.Option(None, help="Seeds instead of the profile's, e.g. 0,1,2 or 0-4."),
    vlm: Optional[str] = typer.Option(None, "--vlm", help="CLIP weights (hub id or folder) for VLM maps; without it "
                                                          "the VLM rows are skipped."),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder [default: ./reports/<profile>]."),
    jobs: Optional[int] = JOBS, runs_dir: Optional[Path] = RUNS_DIR, data_dir: Optional[Path] = DATA_DIR,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars (one line per run stays)."),
    plan: bool = typer.Option(False, "--plan", help="List every run (cached, to train, to resume) and the time to "
                                                    "expect, then stop: nothing is built or trained."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Profiles on published data (waterbirds, "
                                             "redmeat): the release's folder, imported on first use."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="ImageNet weights instead of the profile's "
                                             "(a .safetensors file or a timm hub id)."),
    launcher: Launcher = None,
) -> None:
    """Build the data, train every method on ColorMNIST and DecoyMNIST over several
    seeds, and write report.md, results.csv, results.json and figures. Finished runs
    are reused, so a rerun only rewrites the report and an interrupted one resumes.

    Example: l2l reproduce --quick --out reports/quick
    """
    from ..training.reproduce import describe_plan, reproduce as run_all

    named = [name for name, flag in (("quick", quick), ("full", full), (profile, profile is not None)) if flag]
    if len(named) > 1:
        raise L2LError(f"--quick, --full and --profile exclude each other, got {' and '.join(named)}; pass one of them")
    chosen = PROFILES.get(named[0] if named else "default")
    if pretrained is not None:
        if "pretrained" not in chosen.run:
            raise L2LError(f"profile {chosen.name} trains without ImageNet weights; drop --pretrained")
        chosen = dataclasses.replace(chosen, run={**chosen.run, "pretrained": pretrained})
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if plan:
        typer.echo("\n".join(describe_plan(chosen, seed_list, vlm, runs_dir, data_dir)))
        return
    done = run_all(chosen, seeds=seed_list, vlm=vlm, out=out, runs_dir=runs_dir, data_dir=data_dir,
                   progress=not quiet, n_jobs=jobs, echo=typer.echo, data_root=data_root, launcher=launcher)
    if done["failed"]:
        typer.echo(f"{len(done['failed'])} run(s) diverged before any epoch could be selected and are left out of "
                   "the report (lines marked FAILED above); train them alone with a lower --lambda0 or --lr", err=True)
        raise typer.Exit(1)
