"""`l2l report`: the report of any folder of finished runs, trained by `l2l train`,
`l2l reproduce` or both, without training or generating anything."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..analysis.render import TABLES
from ..errors import L2LError
from .app import app


def parse_where(items: list[str]) -> dict[str, list[str]]:
    """``["dataset=decoymnist", ...]`` -> {field: [values]}: a field given twice takes
    either value; anything else is one line."""
    where: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise L2LError(f"malformed --where {item!r}; give FIELD=VALUE, e.g. --where dataset=decoymnist")
        where.setdefault(key.strip(), []).append(value.strip())
    return where


@app.command("report")
def report(runs_dir: Path = typer.Argument(..., help="Folder of run folders (<data set>/<run group>/seed<k>/)."),
           out: Optional[Path] = typer.Option(None, "--out", help="Folder for report.md, results.csv, "
                                                                 "results.json and figures."),
           table: Optional[str] = typer.Option(None, "--table", help="Print one table of the report as markdown "
                                               f"instead ({' | '.join(TABLES)}): how the docs' tables are rebuilt "
                                               "from records."),
           where: Optional[List[str]] = typer.Option(None, "--where", help="Only runs whose config field has this "
                                                     "value, e.g. --where dataset=decoymnist (repeatable: each "
                                                     "field must match, a field given twice takes either "
                                                     "value).")) -> None:
    """Collect every finished run under RUNS_DIR and write its report and figures,
    beside the papers' published numbers. Reads run records only.

    Example: l2l report runs --out reports/mine
    """
    from ..analysis.records import collect
    from ..analysis.report import filtered, table_text
    from ..record import RESULT_FILE

    if (out is None) == (table is None):
        raise L2LError("pass --out FOLDER for the whole report, or --table KIND for one table; one of the two")
    if not runs_dir.is_dir():
        raise L2LError(f"runs folder {runs_dir} does not exist; pass the --runs-dir that `l2l train` wrote to")
    records = filtered(collect(runs_dir), parse_where(where or []))
    if not records:
        raise L2LError(f"no finished runs under {runs_dir} (looked for */*/seed*/{RESULT_FILE}"
                       + (", with the --where values" if where else "") + "); train some first")
    selection, bound = _sweep_files(runs_dir)
    if table is not None:
        typer.echo(table_text(records, runs_dir, table, selection, bound))
        return
    _write_report(runs_dir, out, records, selection, bound)


def _sweep_files(runs_dir: Path) -> tuple[dict | None, dict | None]:
    """A sweep's choice and optimistic bound, checked before anything is written from them."""
    from ..analysis.report import check_bound, check_selection
    from ..io import read_json
    from ..training.sweep import BOUND_FILE, SELECTION_FILE

    selection_file = runs_dir / SELECTION_FILE  # written by `l2l sweep`
    selection = read_json(selection_file, "rerun the sweep to rewrite it") if selection_file.exists() else None
    if selection is not None:
        check_selection(selection, selection_file)
    bound_file = runs_dir / BOUND_FILE  # written by `l2l sweep` after its selection
    bound = read_json(bound_file, "rerun the sweep to rewrite it") if selection and bound_file.exists() else None
    if bound is not None:
        check_bound(bound, bound_file)
    return selection, bound


def _write_report(runs_dir: Path, out: Path, records: list, selection: dict | None, bound: dict | None) -> None:
    from ..analysis.report import report_runs
    from ..plotting import pyplot

    pyplot()  # before anything is written, if matplotlib is missing
    report_runs(out, records, runs_dir, f"All {len(records)} finished runs in `{runs_dir}`", selection=selection,
                bound=bound)
    typer.echo(f"report: {out / 'report.md'} ({len(records)} runs)")
