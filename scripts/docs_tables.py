"""The measured tables of README.md and docs/*.md, rebuilt from the run records in
``records/`` and checked byte for byte: a number edited by hand, or one whose record is
missing, fails the check.

The README's method table is rebuilt the same way from the methods' own declarations
(``<!-- methods -->`` ... ``<!-- /methods -->``). A table of measurements is a block
between two markers naming the `l2l report` arguments that make it:

    <!-- table: records --table seeds --where dataset=decoymnist -->
    ...generated: the table, then the command that rebuilds it...
    <!-- /table -->

    python scripts/docs_tables.py --check    # exit 1 naming every stale block (the test suite runs this)
    python scripts/docs_tables.py --write    # rewrite every block from the records
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<args>[^\n]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
METHODS = re.compile(r"(<!-- methods -->\n)(?P<body>.*?)(<!-- /methods -->)", re.S)


def methods_table() -> str:
    """Every registered method with its paper and its rule, as the methods declare them."""
    from learning_to_look.methods import METHODS as registry

    rows = [f"| `{name}` | {cls.paper} | {cls.summary} |" for name, cls in registry.items()]
    return "\n".join(["| method | paper | rule |", "|---|---|---|", *rows]) + "\n"


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def generate(args: str, root: Path = ROOT) -> str:
    """The block body ``l2l report ARGS`` makes, run from ``root`` (where ``records/`` lies)."""
    from learning_to_look.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)  # the arguments name records/ relative to the repository
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["report", *shlex.split(args)])
    finally:
        os.chdir(here)
    if code != 0:
        return f"ERROR: `l2l report {args}` failed: {err.getvalue().strip()}\n"
    return f"{out.getvalue().rstrip()}\n\nRebuild: `l2l report {args}`\n"


def rebuilt(text: str, root: Path = ROOT) -> str:
    text = METHODS.sub(lambda m: m.group(1) + methods_table() + m.group(3), text)
    return BLOCK.sub(lambda m: m.group(1) + generate(m.group("args"), root) + m.group(4), text)


def stale(root: Path = ROOT) -> list[str]:
    """Every block whose text is not what its command makes now: where and which command."""
    problems = []
    for doc in documents(root):
        if not doc.exists():
            continue
        text = doc.read_text()
        problems += [f"{doc.relative_to(root)}: the method table (run --write)" for m in METHODS.finditer(text)
                     if m.group("body") != methods_table()]
        for m in BLOCK.finditer(text):
            body = generate(m.group("args"), root)
            if m.group("body") != body or body.startswith("ERROR"):
                line = text[:m.start()].count("\n") + 1
                problems.append(f"{doc.relative_to(root)}:{line}: `l2l report {m.group('args')}`")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite every block from the records")
    ap.add_argument("--check", action="store_true", help="exit 1 if any block differs from its records")
    args = ap.parse_args(argv)
    if args.write:
        for doc in documents():
            if doc.exists():
                doc.write_text(rebuilt(doc.read_text()))
    problems = stale()
    print("\n".join(["stale tables (run `python scripts/docs_tables.py --write` after `make records`):",
                     *problems] if problems else ["every table matches its records"]))
    return 1 if problems and (args.check or args.write) else 0


if __name__ == "__main__":
    sys.exit(main())
