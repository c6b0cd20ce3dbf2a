"""Print the package's internal import graph, one module per line with the modules it
imports (at any depth of the file, lazy imports included), and check the layering
rules: analysis (report, figures) reads records only (figures draw the report's
tables, and both may use plotting and io helpers), and no module
outside methods.py names a registered method.

    python scripts/import_graph.py [SRC_DIR]      # default: src
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "learning_to_look"
ANALYSIS = {"report": {"records", "plotting", "io"}, "figures": {"records", "plotting", "report"}}
#: Literals equal to a method's name that do not name the method, with the reason.
NOT_A_METHOD = {("cli", "l2l"): "the program's name", ("cli.app", "l2l"): "the program's name",
                ("maps.clip", "vanilla"): "a CLIP attention variant",
                ("config", "l2l"): "the paper's method as TrainConfig's default, declared once"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root / PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "(package)"


def imports(path: Path, root: Path) -> set[str]:
    """Internal modules imported by ``path``, as dotted names under the package."""
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            if node.level == 0:
                if not (node.module or "").startswith(PACKAGE):
                    continue
                mod = node.module.split(".")[1:]
            else:
                mod = base + (node.module.split(".") if node.module else [])
            targets = [".".join(mod)] if node.module else [".".join(mod + [a.name]) for a in node.names]
            found.update(t for t in targets if t)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith(PACKAGE + "."))
    return {m for m in found if m != ".".join(here)}


def method_names(root: Path) -> set[str]:
    """Names of the methods registered in methods.py (their ``name = "..."`` lines)."""
    tree = ast.parse((root / PACKAGE / "methods.py").read_text())
    return {n.value.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and any(isinstance(t, ast.Name) and t.id == "name" for t in n.targets)}


def naming_methods(path: Path, names: set[str]) -> list[str]:
    """String literals in ``path`` that are exactly a method's name (docstrings aside)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in names:
            hits.append(f"{node.value!r} at line {node.lineno}")
    return hits


def main(src: str = "src") -> int:
    root = Path(src)
    files = sorted((root / PACKAGE).rglob("*.py"))
    graph = {module_name(f, root): sorted(imports(f, root)) for f in files}
    for mod, deps in graph.items():
        print(f"{mod} -> {', '.join(deps) or '-'}")
    problems = []
    for mod, allowed in ANALYSIS.items():
        bad = [d for d in graph.get(mod, []) if d.split(".")[0] not in allowed]
        if bad:
            problems.append(f"{mod} imports {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})")
    names = method_names(root)
    for f in files:
        mod = module_name(f, root)
        if f.name != "methods.py" and (hits := naming_methods(f, names - {n for m, n in NOT_A_METHOD if m == mod})):
            problems.append(f"{mod} names a method: {', '.join(hits)}")
    print("\n".join(["", "layering:"] + (problems or ["ok"])))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
