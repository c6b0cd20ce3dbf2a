"""The report of a set of runs: tables computed once from the records, then written as
report.md, results.csv, results.json and figures.

It reads run records only, so the report of ``l2l reproduce`` and that of ``l2l report
RUNS_DIR`` on the same runs are the same. Two rules are enforced here rather than
trusted to callers: a map source is only called a VLM when its kind is ``vlm`` *and*
real pretrained weights made it, and published numbers always carry their source and
the word "published".
"""

from __future__ import annotations

import dataclasses
import time
from functools import lru_cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import L2LError
from ..io import atomic_write_json, atomic_write_text
from ..plotting import pyplot
from ..record import Record
from .records import Row, aggregate
from .render import TABLES, csv_text, render_markdown
from .worst_group import worst_group_rows
from .verdicts import (attach_published, bite_rows, published_rows, sensitivity_rows, shared_settings,
                       sweep_summary, verdict_rows, verdict_summary)


@dataclass
class Tables:
    """What the report and the figures show, computed once from the records."""

    rows: list[Row]
    published: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    verdict: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    shared: dict[str, Any]
    paper_loss: tuple[str, ...] = ()
    bites: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sweep: dict[str, Any] | None = None
    bound: dict[str, Any] | None = None  # a sweep's optimistic bound: shown, labelled, never in results.json


def build(records: Sequence[Record], runs_dir: str | Path | None, published: Sequence[dict[str, Any]],
          datasets: Sequence[str], paper_loss: Sequence[str] = (), notes: dict[str, str] | None = None,
          selection: dict[str, Any] | None = None, bound: dict[str, Any] | None = None) -> Tables:
    """The tables of ``records``; ``published`` numbers are set beside the matching rows;
    ``paper_loss`` and ``notes`` as in :func:`verdict_summary`; ``selection`` is a
    sweep's ``selection.json`` when the records are a sweep's, ``bound`` its optimistic bound."""
    rows = aggregate(records, runs_dir)
    attach_published(rows, published)
    verdict = verdict_rows(rows)
    return Tables(rows, published_rows(rows, published, datasets), sensitivity_rows(rows), verdict,
                  verdict_summary(rows, verdict, paper_loss, notes), shared_settings(records), tuple(paper_loss),
                  bite_rows(rows), sweep_summary(selection, published), bound)


def write_report(out: str | Path, tables: Tables, records: Sequence[Record], runs_dir: str | Path | None,
                 header: dict[str, Any]) -> dict[str, Any]:
    """Write report.md, results.csv and results.json into ``out``; returns what results.json holds."""
    out = Path(out)
    first = records[0] if records else None
    environment = {**(first.environment if first else {}), "device": first.device if first else None}
    runs = [{"run_dir": _relative(r.run_dir, runs_dir), "role": r.role, "config": dataclasses.asdict(r.config),
             "maps": dataclasses.asdict(r.maps), "selected_epoch": r.selected_epoch,
             "test": dataclasses.asdict(r.test), "wall_seconds": r.wall_seconds} for r in records]
    summary = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "header": header, "shared_settings": tables.shared,
               "environment": environment, "rows": [r.summary() for r in tables.rows], "published": tables.published,
               "sensitivity": tables.sensitivity, "shortcut_bites": tables.bites, "verdict": tables.verdict,
               "verdict_summary": tables.summary, "worst_group": worst_group_rows(tables.rows),
               "sweep": tables.sweep,
               "runs": runs}
    md = render_markdown(tables, header, environment, len(records))
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "results.csv", csv_text(tables.rows, tables.published))
    atomic_write_json(out / "results.json", summary)
    return summary


def _relative(path: Path, root: str | Path | None) -> str:
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)


PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class Published:
    """``published.yaml`` read into plain data: each published row (its ``source`` spelled
    out), the methods whose loss is the paper's, and a note per data set for the verdict."""

    rows: tuple[dict[str, Any], ...]
    paper_loss: tuple[str, ...]
    notes: dict[str, str]

    @property
    def datasets(self) -> tuple[str, ...]:
        """The data sets some published row has a number for."""
        keys = {"label", "method", "source", "maps"}
        return tuple(dict.fromkeys(k for row in self.rows for k in row if k not in keys))


@lru_cache(maxsize=1)
def published() -> Published:
    raw = yaml.safe_load(PUBLISHED_FILE.read_text())
    rows = tuple({**row, "source": raw["sources"][row["source"]]} for row in raw["published"])
    verdict = raw.get("verdict") or {}
    return Published(rows, tuple(verdict.get("paper_loss", ())), dict(verdict.get("notes") or {}))


#: What a sweep's ``selection.json`` must hold for its report (``training/sweep.py::choose`` writes it).
SELECTION_KEYS = {"dataset": str, "method": str, "axes": dict, "chosen": dict, "seeds": list, "points": list,
                  "test_acc_mean": (int, float), "test_acc_std": (int, float)}


def check_selection(selection: Any, where: Path) -> None:
    """A sweep's choice is sound before anything is written from it: its fields, and a chosen
    point that is one of its grid's points."""
    fix = "rerun the sweep (the same `l2l sweep` command) to rewrite it"
    if not isinstance(selection, dict):
        raise L2LError(f"{where} is not a sweep's selection (not a mapping); {fix}")
    bad = [k for k, kind in SELECTION_KEYS.items() if not isinstance(selection.get(k), kind)]
    if bad:
        raise L2LError(f"{where} is not a sweep's selection ({', '.join(bad)} missing or of the wrong type); {fix}")
    points = [p.get("point") for p in selection["points"] if isinstance(p, dict)]
    if selection["chosen"] not in points:
        raise L2LError(f"{where}: its chosen point {selection['chosen']} is not one of its grid's points; {fix}")


BOUND_KEYS = {"label": str, "bound_test_acc_mean": (int, float), "bound_point": dict, "runs_with_saved_weights": int,
              "points": list}


def check_bound(bound: Any, where: Path) -> None:
    """A sweep's optimistic bound is sound before anything is written from it."""
    bad = [k for k, kind in BOUND_KEYS.items() if not isinstance(bound, dict) or not isinstance(bound.get(k), kind)]
    if bad:
        raise L2LError(f"{where} is not a sweep's optimistic bound ({', '.join(bad)} missing or of the wrong type); "
                       "rerun the sweep to rewrite it")


def filtered(records: Sequence[Record], where: dict[str, list[str]]) -> list[Record]:
    """The records whose config field (or ``role``) has, for each field, one of its given
    values, compared as text (an unset field is ``None``)."""
    fields = set(dataclasses.asdict(records[0].config)) | {"role"} if records else {"role"}
    unknown = sorted(set(where) - fields)
    if unknown:
        raise L2LError(f"--where names no config field: {', '.join(unknown)}; use e.g. --where dataset=decoymnist")
    def value(r: Record, key: str) -> str:
        return r.role if key == "role" else str(getattr(r.config, key))
    return [r for r in records if all(value(r, k) in v for k, v in where.items())]


def table_text(records: Sequence[Record], runs_dir: Path | None, kind: str, selection: dict[str, Any] | None = None,
               bound: dict[str, Any] | None = None) -> str:
    """One table of the report of ``records``, as markdown: what the docs show, rebuilt from records."""
    if kind not in TABLES:
        raise L2LError(f"unknown table {kind!r}; choose one of: {', '.join(TABLES)}")
    pub = published()
    tables = build(records, runs_dir, pub.rows, pub.datasets, pub.paper_loss, pub.notes, selection, bound)
    return TABLES[kind](tables)


def report_runs(out: Path, records: list[Record], runs_dir: Path | None, title: str, stamp: str | None = None,
                selection: dict[str, Any] | None = None, bound: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report and figures of ``records`` beside the published numbers that belong to
    their data sets; ``stamp`` marks every figure (a smoke profile's); ``selection`` is a
    sweep's choice and ``bound`` its optimistic bound."""
    from . import figures

    pyplot()  # before anything is written, if matplotlib is missing
    pub = published()
    tables = build(records, runs_dir, pub.rows, pub.datasets, pub.paper_loss, pub.notes, selection, bound)
    summary = write_report(out, tables, records, runs_dir, {"title": title})
    figures.write_figures(out, tables, pub.rows, stamp)
    return summary
