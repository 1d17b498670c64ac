"""The package's shape, checked: no import cycle anywhere in harness/ (imports under
TYPE_CHECKING and inside functions count: a lazy import is still a dependency), plan/ names no
runtime or model source, test doubles live under tests/, and code comments do not cite tracker
numbers a reader of the repository cannot follow."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(HARNESS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> harness modules it imports, from the source (every import statement)."""
    files = {_module_name(p): p for p in HARNESS.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.startswith("harness") and (found := resolve(target)) and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_harness() -> None:
    assert cycles(import_graph()) == []


def _string_literals(tree: ast.AST, skip_classes: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef) and node.name in skip_classes:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
        found |= _string_literals(node, skip_classes)
    return found


def test_plan_names_no_runtime_and_no_model_source() -> None:
    from harness.models.registry import source_names
    from harness.runtimes.registry import runtime_names

    names = set(runtime_names()) | set(source_names())
    for path in (HARNESS / "plan").glob("*.py"):
        # DecoderSpec's kinds name output formats of an ONNX file (one of them is RF-DETR's),
        # not model sources.
        literals = _string_literals(ast.parse(path.read_text("utf-8")), {"DecoderSpec"})
        assert not names & literals, f"{path.name} names {sorted(names & literals)}"
        imports = import_graph()[_module_name(path)]
        implementations = [m for m in imports if m.startswith(("harness.runtimes.", "harness.models."))
                           and not m.endswith((".plugin", ".registry"))]
        assert not implementations, f"{path.name} imports {implementations}"


def test_no_test_double_ships_in_the_package() -> None:
    assert not [p.name for p in HARNESS.rglob("*.py") if re.search(r"(^|_)(fake|mock|stub)s?(_|\.py$)", p.name)]


@pytest.mark.parametrize("path", sorted(HARNESS.rglob("*.py")), ids=lambda p: str(p.relative_to(HARNESS)))
def test_comments_cite_no_tracker_numbers(path: Path) -> None:
    # "#12" or "issue 12" in a comment or docstring points at a tracker a reader can't open;
    # upstream projects' threads (rf-detr #676) are cited with their repository and are fine.
    text = path.read_text("utf-8")
    assert not re.findall(r"\b(?:issue|ticket|task)s? #?\d+", text, flags=re.IGNORECASE), path.name


def test_the_public_api_resolves_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, harness\n"
        "names = [n for n in harness.__all__ if n != '__version__']\n"
        "for name in names:\n"
        "    getattr(harness, name)\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)\n"
        "print(len(names))\n"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=HARNESS.parent)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 20
