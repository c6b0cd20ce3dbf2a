"""The code's shape, checked: imports point down the layers, analysis reads records only,
only methods/ names a method (scripts/import_graph.py, which prints the whole import
graph); the literal file name of the run record lives in one module; no file or line is too long."""

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRAPH = runpy.run_path(str(ROOT / "scripts" / "import_graph.py"))


def test_layering_rules_hold(capsys):
    assert GRAPH["main"](str(ROOT / "src")) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "analysis.report -> " in out and "training.engine" not in out.split("analysis.report -> ")[1].split("\n")[0]


def _package(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = tmp_path / "learning_to_look" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_the_check_fails_on_an_upward_import(tmp_path):
    root = _package(tmp_path, {"methods/vanilla.py": 'name = "vanilla"\n', "training/run.py": "x = 1\n",
                               "data/store.py": "from ..training import run\n"})
    assert GRAPH["main"](root) == 1


def test_the_check_fails_when_analysis_reads_past_the_records(tmp_path):
    root = _package(tmp_path, {"methods/vanilla.py": 'name = "vanilla"\n',
                               "analysis/report.py": "from ..nn.backbones import Backbone\n"})
    assert GRAPH["main"](root) == 1


def test_the_check_fails_when_a_module_outside_methods_names_a_method(tmp_path):
    root = _package(tmp_path, {"methods/vanilla.py": 'name = "vanilla"\n', "training/run.py": 'KEY = "vanilla"\n'})
    assert GRAPH["main"](root) == 1
    root = _package(tmp_path / "ok", {"methods/vanilla.py": 'name = "vanilla"\n', "training/run.py": "KEY = 1\n"})
    assert GRAPH["main"](root) == 0


def test_the_run_record_file_is_named_in_one_module():
    named = [p.relative_to(ROOT / "src") for p in sorted((ROOT / "src").rglob("*.py"))
             if '"result.json"' in p.read_text()]
    assert [str(p) for p in named] == ["learning_to_look/record.py"]


#: The longest source file (lines): a module past it does too much to read at once.
MAX_FILE = 450


def test_no_source_file_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "src").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_FILE}
    assert long == {}


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
