"""Every measured table in README.md and docs/ is rebuilt from records/ by the command named
beside it (scripts/docs_tables.py): a number edited by hand, or a record gone, fails."""

import runpy
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = runpy.run_path(str(ROOT / "scripts" / "docs_tables.py"))


def test_every_table_in_the_docs_matches_its_records():
    assert DOCS["stale"]() == []


def _copy(tmp_path: Path) -> Path:
    """A repository with README.md, docs/ and records/ to spoil."""
    for name in ("README.md", "docs", "records"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def test_the_check_fails_when_a_number_is_edited_or_its_record_is_gone(tmp_path):
    root = _copy(tmp_path)
    doc = next(d for d in DOCS["documents"](root) if d.exists() and DOCS["BLOCK"].search(d.read_text()))
    text = doc.read_text()
    body = DOCS["BLOCK"].search(text).group("body")
    row = next(line for line in body.splitlines() if line.startswith("| ") and any(c.isdigit() for c in line))
    edited = row.replace(next(c for c in row if c.isdigit()), "9" if "9" != next(c for c in row if c.isdigit())
                         else "8", 1)
    doc.write_text(text.replace(row, edited, 1))
    assert DOCS["stale"](root)
    doc.write_text(text)
    assert DOCS["stale"](root) == []
    shutil.rmtree(root / "records")
    assert DOCS["stale"](root)
