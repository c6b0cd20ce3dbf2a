"""`l2l reproduce`: every method on both benchmarks over several seeds, then a report.

A profile is plain data in ``profiles.yaml`` (what to train, on how much, with which
seeds); the work is :func:`reproduce`, which leans on the engine's caching: a
finished run is read back from its ``result.json`` and a killed one resumes from its
checkpoint, so a second call with the same settings trains nothing.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import PAPER_CONFIG, TrainConfig
from ..data import dataset_path, load_dataset
from ..errors import L2LError
from ..methods import BASELINE
from .resolve import Resolved, resolve_run
from .run import CHECKPOINT_FILE, default_runs_dir, run_dir_for, run_task
from .launchers import Launcher, Local
from .parallel import workers
from ..plotting import pyplot
from ..analysis.report import report_runs
from ..record import RESULT_FILE, Record, has_record, read_record
from ..registry import Registry


PROFILES_FILE = Path(__file__).with_name("profiles.yaml")


@dataclass
class Cell:
    """One row of the results table, trained once per seed. ``role`` says how to read
    it: ``method`` (a compared method), ``upper-bound``, ``control`` (a map source
    expected to fail), ``vlm`` or ``sensitivity``."""

    dataset: str
    method: str
    maps: str = PAPER_CONFIG.maps
    backbone: str = PAPER_CONFIG.backbone
    role: str = "method"
    map_options: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, run: dict[str, Any], seed: int) -> TrainConfig:
        return TrainConfig(dataset=self.dataset, method=self.method, maps=self.maps, backbone=self.backbone,
                           map_options=dict(self.map_options), seed=seed, **{**run, **self.overrides})


@dataclass
class Sensitivity:
    """Map-quality sensitivity: ``method`` trained on degraded oracle maps
    (``maps/degraded.py``) in one setting (``backbone``, ``schedule``), ``grid`` mapping
    a degradation to its strengths; ``seeds`` None means the profile's."""

    method: str = ""
    datasets: tuple[str, ...] = ()
    grid: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] | None = None
    map_seed: int = 0
    backbone: str = PAPER_CONFIG.backbone
    schedule: str = PAPER_CONFIG.schedule

    def cells(self) -> list[Cell]:
        return [Cell(ds, self.method, "degraded-oracle", backbone=self.backbone, role="sensitivity",
                     map_options={"degradation": kind, "strength": float(s), "seed": self.map_seed},
                     overrides={"schedule": self.schedule})
                for ds in self.datasets for kind, strengths in self.grid.items() for s in strengths]


@dataclass
class Profile:
    name: str
    description: str
    seeds: list[int]
    #: Settings applied to every run of the profile (on top of the paper's defaults).
    run: dict[str, Any]
    cells: list[Cell]
    sensitivity: Sensitivity = field(default_factory=Sensitivity)
    #: A smoke profile's numbers mean nothing; its figures say so across their face.
    smoke: bool = False
    #: An imported data set the profile trains on: {name, format} (``l2l data import --format``),
    #: imported from ``--data-root`` when it is not in the data folder yet.
    data: dict[str, str] | None = None
    #: The rows ``--vlm WEIGHTS`` adds on the profile's own data set: {methods, maps, options};
    #: None: the paper's (:attr:`Paper.vlm`) on the benchmarks.
    vlm: dict[str, Any] | None = None


@dataclass
class Paper:
    """``profiles.yaml`` read into types: the benchmarks, the VLM rows and the profiles."""

    benchmarks: tuple[str, ...]
    vlm: dict[str, str]
    profiles: Registry[Profile]


def _datasets(value: str | list[str], benchmarks: tuple[str, ...]) -> tuple[str, ...]:
    return benchmarks if value == "benchmarks" else tuple(value)


def _cells(spec: list[dict[str, Any]], benchmarks: tuple[str, ...]) -> list[Cell]:
    """Expand each entry (data sets x methods x backbones x schedules, shared fields) into
    cells, in order; ``backbones`` and ``schedules`` default to the paper's."""
    out = []
    for entry in spec:
        shared = {k: v for k, v in entry.items() if k not in ("datasets", "methods", "backbones", "schedules")}
        overrides = shared.pop("overrides", {})
        backbones = entry.get("backbones", [shared.pop("backbone", PAPER_CONFIG.backbone)])
        out += [Cell(ds, m, backbone=b, overrides={**overrides, "schedule": s}, **shared)
                for ds in _datasets(entry["datasets"], benchmarks) for m in entry["methods"] for b in backbones
                for s in entry.get("schedules", [PAPER_CONFIG.schedule])]
    return out


def _profile_cells(sets: dict[str, Any], names: str | list[str], benchmarks: tuple[str, ...]) -> list[Cell]:
    """The cells of one cell set or of several in order; a cell that two sets share
    (equal fields) is trained once."""
    out: list[Cell] = []
    for name in [names] if isinstance(names, str) else names:
        out += [c for c in _cells(sets[name], benchmarks) if c not in out]
    return out


def load_paper(path: Path = PROFILES_FILE) -> Paper:
    raw = yaml.safe_load(path.read_text())
    benchmarks = tuple(raw["benchmarks"])
    profiles: Registry[Profile] = Registry("profile")
    for name, p in raw["profiles"].items():
        sens = dict(p.get("sensitivity") or {})
        sens["datasets"] = _datasets(sens.get("datasets", []), benchmarks)
        cells = _profile_cells(raw["cell_sets"], p["cells"], benchmarks)
        sensitivity = Sensitivity(**{"method": raw["sensitivity_method"], **sens})
        profiles.add(name, Profile(name, p["description"], list(p["seeds"]), dict(p["run"]), cells, sensitivity,
                                   bool(p.get("smoke", False)), p.get("data"), p.get("vlm")))
    return Paper(benchmarks, dict(raw["vlm"]), profiles)


PAPER = load_paper()
PROFILES = PAPER.profiles

SMOKE_STAMP = "smoke run: numbers mean nothing"
NO_VLM_LINE = ("no VLM weights given (--vlm), so the VLM rows are skipped; guidance uses map sources that need no "
               "weights: oracle (annotation), intensity (image-statistic), degraded-oracle (annotation)")


def vlm_cells(vlm: str, profile: Profile) -> list[Cell]:
    """The rows guided by the VLM ``vlm``: the profile's own (its methods on its data set),
    else the paper's method and CLIP backend on every benchmark."""
    if profile.vlm is not None and profile.data is not None:
        spec = profile.vlm
        return [Cell(profile.data["name"], m, spec["maps"], role="vlm",
                     map_options={"vlm": str(vlm), **spec.get("options", {})}) for m in spec["methods"]]
    spec = PAPER.vlm
    return [Cell(ds, spec["method"], spec["maps"], role="vlm",
                 map_options={"vlm": str(vlm), "variant": spec["variant"]})
            for ds in PAPER.benchmarks]


def plan(profile: Profile, seeds: list[int] | None = None, vlm: str | None = None,
         data_dir: Path | None = None) -> list[tuple[Cell, Resolved]]:
    """Every (cell, resolved config) to train, seed-major so an early stop still covers every
    cell. Cells that resolve to the same run (vanilla written with two map sources, say)
    are planned once: one folder, one record, each seed counted once."""
    check_imported(profile, data_dir)
    main = profile.cells + (vlm_cells(vlm, profile) if vlm else [])
    sens = profile.sensitivity.cells()
    main_seeds = seeds or profile.seeds
    sens_seeds = seeds or profile.sensitivity.seeds or profile.seeds
    jobs, planned = [], set()
    for seed in sorted(set(main_seeds) | set(sens_seeds)):
        cells = [c for c in main if seed in main_seeds] + [c for c in sens if seed in sens_seeds]
        for cell in cells:
            run = resolve_run(cell.config(profile.run, seed), data_dir)
            key = (run.cfg.fingerprint(), seed)
            if key not in planned:
                planned.add(key)
                jobs.append((cell, run))
    return jobs


def _cost_key(cfg: TrainConfig | dict[str, Any]) -> tuple:
    """What a run's time depends on, roughly: method, network, schedule, training-set size,
    epochs, and whether it reads maps (CDEP's colour penalty reads none and costs more)."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return (c.get("method"), c.get("backbone"), c.get("schedule"), c.get("train_subset"), c.get("epochs"),
            c.get("maps") == "none")


def _finished_times(runs_dir: Path) -> tuple[dict[Path, list[float]], dict[tuple, list[float]]]:
    """Wall seconds of every finished run under ``runs_dir`` (sweeps' records lie deeper),
    read once: by run group (the seeds of one configuration), by :func:`_cost_key`, and
    per epoch by :func:`_epoch_key`."""
    by_group: dict[Path, list[float]] = {}
    by_cost: dict[tuple, list[float]] = {}
    for f in runs_dir.glob(f"*/*/seed*/{RESULT_FILE}"):
        try:
            record = read_record(f.parent)
        except L2LError:
            continue  # a damaged record times nothing; `l2l report` names it
        by_group.setdefault(f.parent.parent, []).append(record.wall_seconds)
        by_cost.setdefault(_cost_key(record.config), []).append(record.wall_seconds)
        epochs = _cost_key(record.config)[4] or 1
        by_cost.setdefault(_epoch_key(record.config), []).append(record.wall_seconds / epochs)
    return by_group, by_cost


def _epoch_key(cfg: TrainConfig | dict[str, Any]) -> tuple:
    """:func:`_cost_key` without the epochs, for seconds per epoch."""
    return ("per epoch", *_cost_key(cfg)[:4], *_cost_key(cfg)[5:])


def _vanilla_key(cfg: TrainConfig) -> tuple:
    """The :func:`_epoch_key` of vanilla in ``cfg``'s setting: what a method's measured
    relative cost per epoch (``Method.epoch_cost``) scales."""
    return _epoch_key(dataclasses.replace(cfg, method=BASELINE, maps="none"))


def _estimate(run: Resolved, folder: Path, by_group: dict[Path, list[float]],
              similar: dict[tuple, list[float]]) -> tuple[str, float] | None:
    """(how, seconds) to expect for a run still to train: from finished seeds of the same
    configuration ("same"), of the same cost (:func:`_cost_key`) on other data or maps
    ("alike"), or vanilla's in the same setting times the method's relative cost per epoch
    ("scaled"); None when nothing finished times it."""
    for how, times, factor in (("same", by_group.get(folder.parent, []), 1.0),
                               ("alike", similar.get(_cost_key(run.cfg), []), 1.0),
                               ("scaled", similar.get(_vanilla_key(run.cfg), []),
                                run.method.relative_cost() * run.cfg.epochs)):
        if times:
            return how, factor * sum(times) / len(times)
    return None


def check_imported(profile: Profile, data_dir: Path | None) -> None:
    """A profile on an imported data set needs it imported (``--data-root`` does that)."""
    if profile.data and not dataset_path(profile.data["name"], data_dir).is_file():
        name, fmt = profile.data["name"], profile.data["format"]
        raise L2LError(f"profile {profile.name} trains on the data set {name}, not imported in "
                       f"{dataset_path(name, data_dir).parent}; pass --data-root DIR (the {fmt} release) or run "
                       f"`l2l data import {name} --from DIR --format {fmt}` first")


def import_data(profile: Profile, data_root: Path | None, data_dir: Path | None,
                echo: Callable[[str], None]) -> None:
    """Import the profile's data set from ``data_root`` when it is not in the data folder yet."""
    if profile.data is None:
        if data_root is not None:
            raise L2LError(f"--data-root is for profiles on imported data (waterbirds, redmeat); profile "
                           f"{profile.name} builds its own; drop it")
        return
    name, fmt = profile.data["name"], profile.data["format"]
    if dataset_path(name, data_dir).is_file() or data_root is None:
        return
    from ..data.imported import import_dataset

    path, skipped, warnings = import_dataset(name, data_root, data_dir, fmt=fmt, progress=False)
    for line in warnings:
        echo(f"warning: {line}")
    echo(f"data {name}: imported from {data_root} ({fmt}) -> {path}" + (f", {skipped} bad files" if skipped else ""))


def describe_plan(profile: Profile, seeds: list[int] | None = None, vlm: str | None = None,
                  runs_dir: Path | None = None, data_dir: Path | None = None) -> list[str]:
    """What ``reproduce`` would do, one line per run (cached, to train, or to resume),
    then a total with the time to expect (:func:`_estimate`); nothing is built or trained."""
    runs_dir = Path(runs_dir or default_runs_dir())
    jobs, (by_group, similar) = plan(profile, seeds, vlm, data_dir), _finished_times(runs_dir)
    lines, todo, timed, unknown = [], 0, {"same": [], "alike": [], "scaled": []}, 0
    for k, (cell, run) in enumerate(jobs, 1):
        cfg, folder = run.cfg, run_dir_for(run.cfg, runs_dir)
        if has_record(folder):
            status = "cached"
        else:
            todo += 1
            status = "to resume" if (folder / CHECKPOINT_FILE).exists() else "to train"
            estimate = _estimate(run, folder, by_group, similar)
            if estimate:
                timed[estimate[0]].append(estimate[1])
            unknown += estimate is None
        options = "".join(f" {k} {v}" for k, v in cfg.map_options.items() if k != "seed")
        lines.append(f"[{k}/{len(jobs)}] {cfg.dataset} {cfg.method} maps {cfg.maps}{options} {cfg.backbone} "
                     f"{cfg.schedule} seed {cfg.seed} ({cell.role}): {status}")
    same, alike, scaled = timed["same"], timed["alike"], timed["scaled"]
    lines.append(f"{len(jobs)} runs: {len(jobs) - todo} cached, {todo} to train"
                 + (f"; about {sum(same) / 3600:.1f} h of one-thread run time for the {len(same)} with a finished "
                    "seed of the same configuration" if same else "")
                 + (f"; about {sum(alike) / 3600:.1f} h for the {len(alike)} timed by finished runs of the same "
                    "method, network, schedule and training-set size on other data or maps" if alike else "")
                 + (f"; about {sum(scaled) / 3600:.1f} h for the {len(scaled)} timed by vanilla's finished runs in "
                    "the same setting times the method's measured cost per epoch" if scaled else "")
                 + (f"; {unknown} with nothing to time them by" if unknown else ""))
    return lines


def check_vlm(vlm: str, profile: Profile | None = None) -> dict[str, Any]:
    """Load the weights once before any training so a missing model fails in seconds."""
    from ..maps.weights import load_clip

    weights = load_clip(vlm)
    own = profile is not None and profile.vlm is not None and profile.data is not None
    return {"source": str(vlm), "identity": weights.identity, "real_vlm": weights.is_real,
            "backend": profile.vlm["maps"] if own else f"{PAPER.vlm['maps']}/{PAPER.vlm['variant']}"}


def reproduce(profile: Profile, *, seeds: list[int] | None = None, vlm: str | None = None, out: Path | None = None,
              runs_dir: Path | None = None, data_dir: Path | None = None, progress: bool = True,
              n_jobs: int | None = None, echo: Callable[[str], None] = print,
              data_root: Path | None = None, launcher: Launcher | None = None) -> dict[str, Any]:
    """Build the data, train every planned run (reusing what is on disk; here in ``n_jobs``
    workers, or as jobs of ``launcher``), write the report from the runs' records, as
    ``l2l report`` would from the same runs."""
    t0 = time.perf_counter()
    pyplot()  # the report ends in figures: fail now, not after hours of training, if matplotlib is missing
    runs_dir = Path(runs_dir or default_runs_dir())
    out = Path(out or Path("reports") / profile.name)
    import_data(profile, data_root, data_dir, echo)
    jobs = plan(profile, seeds, vlm, data_dir)
    echo(f"profile {profile.name}: {profile.description}; {len(jobs)} runs -> {out}")
    _prepare(jobs, data_dir, vlm, echo, profile)
    found = [(cell, run) for cell, run in jobs if has_record(run_dir_for(run.cfg, runs_dir))]
    todo = [(cell, run) for cell, run in jobs if not has_record(run_dir_for(run.cfg, runs_dir))]
    failed = _train(found, todo, len(jobs), runs_dir, data_dir, progress, n_jobs, echo, launcher or Local())
    trained = len(todo) - len(failed)
    # The role is how this profile reads a run (a run may serve two profiles): set here, never written.
    records = [dataclasses.replace(read_record(run_dir_for(run.cfg, runs_dir)), role=cell.role) for cell, run in jobs
               if has_record(run_dir_for(run.cfg, runs_dir))]
    summary = report_runs(out, records, runs_dir, f"Profile **{profile.name}**: {profile.description}",
                          stamp=SMOKE_STAMP if profile.smoke else None)
    echo(f"report: {out / 'report.md'} ({trained} runs trained, {len(found)} cached, {len(failed)} failed, "
         f"{time.perf_counter() - t0:.0f} s)")
    return summary | {"trained": trained, "cached": len(found), "failed": failed}


def _prepare(jobs: list[tuple[Cell, Resolved]], data_dir: Path | None, vlm: str | None,
             echo: Callable[[str], None], profile: Profile | None = None) -> None:
    """Build every data set the plan needs, and say where the maps come from, before any training."""
    for name in sorted({run.cfg.dataset for _, run in jobs}):
        existed = dataset_path(name, data_dir).exists()
        load_dataset(name, data_dir)
        echo(f"data {name}: {'found' if existed else 'built'} in {dataset_path(name, data_dir).parent}")
    vlm_info = check_vlm(vlm, profile) if vlm else None
    if vlm_info:
        real = "real pretrained weights" if vlm_info["real_vlm"] else "NOT a real VLM (random-init test weights)"
        echo(f"VLM maps: {vlm_info['backend']} from {vlm_info['identity']} ({real})")
    else:
        echo(NO_VLM_LINE)


def _train(found: list[tuple[Cell, Resolved]], todo: list[tuple[Cell, Resolved]], total: int, runs_dir: Path,
           data_dir: Path | None, progress: bool, n_jobs: int | None, echo: Callable[[str], None],
           launcher: Launcher) -> list[str]:
    """List the cached runs, train the others in ``n_jobs`` workers or as ``launcher``'s
    jobs; the runs that failed, one line each."""
    for k, (_, run) in enumerate(found, 1):
        echo(_run_line(k, total, read_record(run_dir_for(run.cfg, runs_dir)), "cached"))
    if todo:
        where = (f"{launcher.name} jobs" if launcher.remote else
                 f"{workers(n_jobs, len(todo))} process(es) of one thread")
        echo(f"{len(todo)} runs to train in {where}")
    here = launcher.in_process(n_jobs, len(todo))
    tasks = [(run, runs_dir, data_dir, progress and here, cell.role) for cell, run in todo]
    failed = []
    outcomes = launcher.map(attempt_run, tasks, n_jobs, runs_dir=runs_dir, unit="run" if progress else None)
    for k, (i, outcome) in enumerate(outcomes, len(found) + 1):
        cfg = tasks[i][0].cfg
        if isinstance(outcome, str):
            failed.append(f"{cfg.dataset} {cfg.method} {cfg.backbone} {cfg.schedule} seed {cfg.seed}")
            echo(f"[{k}/{total}] {failed[-1]}: FAILED, {outcome}")
        else:
            echo(_run_line(k, total, outcome, f"{outcome.wall_seconds:.0f} s"))
    return failed


def attempt_run(run: Resolved, runs_dir: Path, data_dir: Path | None, progress: bool, role: str) -> Record | str:
    """One run of a profile. A problem of this run alone, with its one-line fix (its loss
    diverged before it had a model to select, its checkpoint is corrupt or another
    config's, another process holds its lock), comes back as that line instead of
    stopping every other run of a job that may take days; a bug still raises."""
    try:
        return run_task(run, runs_dir, data_dir, progress, role)
    except L2LError as err:
        return str(err)


def _run_line(k: int, n: int, record: Record, when: str) -> str:
    cfg = record.config
    extra = "" if cfg.input_transform == "none" else f" {cfg.input_transform}"
    used = record.selection.get("rule_used", cfg.selection)
    fallback = f", selected by {used}: {cfg.selection} broke down" if used != cfg.selection else ""
    return (f"[{k}/{n}] {cfg.dataset} {cfg.method}{extra} {record.maps.label} "
            f"{cfg.backbone} seed {cfg.seed}: test acc {record.test.accuracy:.2f}%  ({when}{fallback})")
