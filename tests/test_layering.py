"""The code's shape, checked: analysis reads records only, and only methods.py names a
method (scripts/import_graph.py, which prints the whole import graph); no line is too long."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layering_rules_hold(capsys):
    graph = runpy.run_path(str(ROOT / "scripts" / "import_graph.py"))
    assert graph["main"](str(ROOT / "src")) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "report -> io, records" in out and "figures -> plotting, records, report" in out


def test_the_check_can_fail(tmp_path):
    graph = runpy.run_path(str(ROOT / "scripts" / "import_graph.py"))
    pkg = tmp_path / "learning_to_look"
    pkg.mkdir()
    (pkg / "methods.py").write_text('class Vanilla:\n    name = "vanilla"\n')
    (pkg / "report.py").write_text('from .models import Backbone\nKEY = "vanilla"\n')
    assert graph["main"](str(tmp_path)) == 1


#: The project's line length (the guide's limit, read on one screen beside a diff).
MAX_LINE = 120


def long_lines(root: Path) -> list[str]:
    """Every Python line in ``root`` longer than MAX_LINE, as path:line."""
    return [f"{path.relative_to(root)}:{i}" for path in sorted(root.rglob("*.py")) if ".venv" not in path.parts
            for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > MAX_LINE]


def test_no_line_is_longer_than_the_limit(tmp_path):
    assert [line for part in ("src", "tests", "scripts", "benchmarks") for line in long_lines(ROOT / part)] == []
    (tmp_path / "wide.py").write_text("x = 1\n" + "y = " + "1" * MAX_LINE + "\n")
    assert long_lines(tmp_path) == ["wide.py:2"]
