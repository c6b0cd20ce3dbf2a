"""`l2l report`: the report of any folder of finished runs, trained by `l2l train`,
`l2l reproduce` or both, without training or generating anything."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import L2LError
from .app import app


@app.command("report")
def report(runs_dir: Path = typer.Argument(..., help="Folder of run folders (<data set>/<run group>/seed<k>/)."),
           out: Path = typer.Option(..., "--out", help="Folder for report.md, results.csv, results.json and figures.")
           ) -> None:
    """Collect every finished run under RUNS_DIR and write its report and figures,
    beside the papers' published numbers. Reads run records only.

    Example: l2l report runs --out reports/mine
    """
    from ..analysis.records import collect
    from ..analysis.report import check_bound, check_selection, report_runs
    from ..training.sweep import BOUND_FILE, SELECTION_FILE
    from ..io import read_json
    from ..record import RESULT_FILE
    from ..plotting import pyplot

    if not runs_dir.is_dir():
        raise L2LError(f"runs folder {runs_dir} does not exist; pass the --runs-dir that `l2l train` wrote to")
    pyplot()  # before anything is written, if matplotlib is missing
    records = collect(runs_dir)
    if not records:
        raise L2LError(f"no finished runs under {runs_dir} (looked for */*/seed*/{RESULT_FILE}); train some first")
    selection_file = runs_dir / SELECTION_FILE  # written by `l2l sweep`
    selection = read_json(selection_file, "rerun the sweep to rewrite it") if selection_file.exists() else None
    if selection is not None:
        check_selection(selection, selection_file)
    bound_file = runs_dir / BOUND_FILE  # written by `l2l sweep` after its selection
    bound = read_json(bound_file, "rerun the sweep to rewrite it") if selection and bound_file.exists() else None
    if bound is not None:
        check_bound(bound, bound_file)
    report_runs(out, records, runs_dir, f"All {len(records)} finished runs in `{runs_dir}`", selection=selection,
                bound=bound)
    typer.echo(f"report: {out / 'report.md'} ({len(records)} runs)")
