"""The code's shape, checked: analysis reads records only, and only methods.py names a
method (scripts/import_graph.py, which prints the whole import graph)."""

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
