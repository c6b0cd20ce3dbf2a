"""Print the package's internal import graph, one module per line with the modules it
imports (at any depth of the file, lazy imports included), and check the layering:

- every import points down the layers below (or stays inside its own package), so data
  flows one way: data -> maps -> networks and methods -> training -> records ->
  analysis, with the CLI on top;
- analysis reads run records only: it imports no network, method, map source or engine;
- no module outside ``methods/`` names a registered method.

    python scripts/import_graph.py [SRC_DIR]      # default: src
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "learning_to_look"
#: Each top-level module or package and its layer; an import may only reach a lower layer
#: or its own package. The public shims (``records``, ``train``) sit on top with the CLI.
LAYERS = {
    "errors": 0,
    "registry": 1, "io": 1, "device": 1, "hub": 1, "progress": 1, "scalars": 1, "plotting": 2,
    "data": 3, "maps": 4, "nn": 5, "config": 6, "methods": 7, "record": 8,
    "analysis": 9, "training": 10, "inference": 11,
    "cli": 12, "records": 12, "train": 12, "(package)": 13,
}
#: What analysis may import besides itself: it reads records, never models or maps.
ANALYSIS_READS = {"record", "config", "io", "plotting", "errors", "registry"}
#: Literals equal to a method's name that do not name the method, with the reason.
NOT_A_METHOD = {("cli", "l2l"): "the program's name", ("cli.app", "l2l"): "the program's name",
                ("maps.clip_rules", "vanilla"): "a CLIP attention variant",
                ("config", "l2l"): "the paper's method as TrainConfig's default, declared once",
                ("config", "ce"): "the cross-entropy-only phase 1 (PHASE1_CHOICES), not the counterexamples method",
                ("maps.gals", "gals"): "the GALS map source (CLIP's attention), not the GALS loss",
                ("maps.precomputed", "gals"): "the GALS map source (CLIP's attention), not the GALS loss",
                ("analysis.records", "vanilla"): "the baseline every method is compared with, declared once"}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root / PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "(package)"


def imports(path: Path, root: Path) -> set[str]:
    """Internal modules imported by ``path``, as dotted names under the package."""
    here = module_name(path, root).split(".") if module_name(path, root) != "(package)" else []
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
    """Names of the registered methods (the ``name = "..."`` lines in ``methods/``)."""
    names = set()
    for f in sorted((root / PACKAGE / "methods").glob("*.py")):
        names |= {n.value.value for n in ast.walk(ast.parse(f.read_text()))
                  if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                  and any(isinstance(t, ast.Name) and t.id == "name" for t in n.targets)}
    return names


def naming_methods(path: Path, names: set[str]) -> list[str]:
    """String literals in ``path`` that are exactly a method's name."""
    return [f"{node.value!r} at line {node.lineno}" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and node.value in names]


def layer_problems(graph: dict[str, list[str]]) -> list[str]:
    """Imports that point up, or sideways into another package of the same layer, and
    analysis reaching past the records."""
    problems = []
    tops = {m.split(".")[0] for m in graph}
    for mod, deps in graph.items():
        top = mod.split(".")[0]
        if top not in LAYERS:
            problems.append(f"{mod} is in no layer: add {top!r} to LAYERS in scripts/import_graph.py")
            continue
        for dep in deps:
            target = dep.split(".")[0]
            if target == top or (target not in tops and target not in LAYERS):  # an attribute of the package
                continue
            if LAYERS.get(target, 99) >= LAYERS[top]:
                problems.append(f"{mod} imports {dep}, which is not below it ({top} layer {LAYERS[top]}, "
                                f"{target} layer {LAYERS.get(target, '?')})")
            elif top == "analysis" and target not in ANALYSIS_READS:
                problems.append(f"{mod} imports {dep}: analysis reads records only "
                                f"(allowed: {', '.join(sorted(ANALYSIS_READS))})")
    return problems


def main(src: str = "src") -> int:
    root = Path(src)
    files = sorted((root / PACKAGE).rglob("*.py"))
    graph = {module_name(f, root): sorted(imports(f, root)) for f in files}
    for mod, deps in graph.items():
        print(f"{mod} -> {', '.join(deps) or '-'}")
    problems = layer_problems(graph)
    names = method_names(root)
    for f in files:
        mod = module_name(f, root)
        if mod.split(".")[0] != "methods" and (
                hits := naming_methods(f, names - {n for m, n in NOT_A_METHOD if m == mod})):
            problems.append(f"{mod} names a method: {', '.join(hits)}")
    print("\n".join(["", "layering:"] + (problems or ["ok"])))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
