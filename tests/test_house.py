"""The house's shape, checked from the code's own imports: no import circle anywhere (at module level, inside
functions, or only for type checkers), and no source file over 400 lines outside the tests."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("acon", "ablation", "studies", "report", "benchmarks")
MAX_LINES = 400
CODE = (".py", ".cpp", ".sh")


def _source_files() -> list[Path]:
    """The tracked and untracked, not ignored, files of the checkout (every file where git is absent)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [p for p in files if p.is_file()]


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every project module (``run_study`` and the packages' modules) by dotted name."""
    found = {_module_of(p): p for p in _source_files() if p.suffix == ".py"
             and (p.relative_to(ROOT).parts[0] in PACKAGES or p.relative_to(ROOT).as_posix() == "run_study.py")}
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file: ``import a.b`` names a.b, ``from a import b``
    names the module a.b where there is one, else a (its ``__init__``); relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def project(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(filter(None, (project(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else project(base) or "")
    out.discard("")
    out.discard(name)
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_checks_see_a_circle_and_the_imports_inside_functions():
    """The checker itself: a circle of three is found, a chain is not; and it reads imports inside functions."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph()
    assert "studies.catalog" in graph["run_study"]  # imported inside cmd_list / _check_study only
    assert "acon.registry" in graph["studies.errors"]


def test_no_import_circle_anywhere():
    found = circles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_source_file_over_400_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(errors="replace").splitlines()) for p in _source_files()
             if p.suffix in CODE and p.relative_to(ROOT).parts[0] != "tests"}
    assert len(sizes) > 50  # the walk found the house
    over = {path: n for path, n in sizes.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines (split each by what it holds): {over}"
