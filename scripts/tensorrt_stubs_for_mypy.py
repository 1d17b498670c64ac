"""Make the PyPI `tensorrt-stubs` package usable by mypy, for type-checking the TensorRT runtime.

Why this exists: `tensorrt-stubs` (10.13.0.35.1, the newest on PyPI) installs its `.pyi` files
as `site-packages/tensorrt/` and `site-packages/tensorrt_bindings/`, with no `py.typed` marker and
not as a `tensorrt-stubs/` folder, so mypy does not use them (PEP 561): with
`ignore_missing_imports` every TensorRT name silently becomes `Any` and nothing is checked.
The generated stubs also contain lines Python cannot parse (a parameter named `in`, a
parameter without a default after one with a default), which make mypy stop with syntax errors,
and they declare the module-level `bool: DataType` (TensorRT's `trt.bool`), which shadows the
builtin in every `-> bool` annotation of the module, so mypy reads those as invalid (Any).

This script copies the installed stub files into a folder of their own and repairs them:
keyword parameters renamed (`in` -> `in_`), late parameters given a `= ...` default, `bool` in
annotations spelled `builtins.bool`, the undeclared names `typing_extensions` and `capsule`
imported, and `# mypy: ignore-errors` at the top of each file (the remaining defects, such as
`self` annotated with another class, are inside the generated stubs; mypy still reads the
types the harness uses from them). It checks that every file parses and prints the folder.
Put it on MYPYPATH (a folder outside the repository, or one git ignores):

    python scripts/tensorrt_stubs_for_mypy.py /tmp/trt-typings
    MYPYPATH=/tmp/trt-typings mypy --warn-unused-ignores harness/runtimes/tensorrt*.py

(mypy refuses site-packages itself on MYPYPATH, hence the copy.) The syntax repairs only touch
signatures of plugin and layer-building methods the harness never calls.
"""

from __future__ import annotations

import ast
import keyword
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

DIST = "tensorrt-stubs"
PACKAGES = ("tensorrt", "tensorrt_bindings")

_DEF = re.compile(r"^(?P<head>\s*def \w+\()(?P<params>.*)(?P<tail>\)\s*(->.*)?:\s*(#.*)?)$")


def _split_params(params: str) -> list[str]:
    """Split a parameter list on top-level commas (brackets nest in annotations)."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in params:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def repair_def_line(line: str) -> str:
    """One `def` line made parseable; lines that need nothing come back unchanged."""
    match = _DEF.match(line)
    if not match:
        return line
    params = _split_params(match["params"])
    fixed: list[str] = []
    seen_default = False
    for raw in params:
        param = raw.strip()
        name, sep, rest = param.partition(":")
        bare = name.strip()
        if keyword.iskeyword(bare):
            param = f"{bare}_{sep}{rest}"
        if param.startswith("*"):
            seen_default = False  # after *args / * the rule no longer applies
        elif "=" in param:
            seen_default = True
        elif seen_default and param not in ("/",):
            param = f"{param} = ..."
        fixed.append(param)
    return f"{match['head']}{', '.join(fixed)}{match['tail']}"


# `bool` as a type, not `trt.bool` / `DataType.BOOL`, not inside quotes (`__all__`), and not the
# module-level `bool: DataType` declaration itself.
_BOOL = re.compile(r"(?<![\w.'\"])bool(?![\w'\"])")


def repair_line(line: str) -> str:
    line = repair_def_line(line)
    if line.startswith("bool:"):
        return line
    return _BOOL.sub("builtins.bool", line)


def repair(text: str) -> str:
    # splitlines(): the published files have CRLF line ends.
    lines = [repair_line(line) for line in text.splitlines()]
    # `import builtins` after any `from __future__` import, which must stay first.
    at = next((i + 1 for i, line in enumerate(lines) if line.startswith("from __future__")), 0)
    # Names the generated stubs use without importing: `typing_extensions.Buffer` (bytes-like
    # arguments) and pybind11's `capsule` (raw pointers), which would otherwise become Any.
    lines[at:at] = ["import builtins", "import typing_extensions", "from typing import Any as capsule"]
    return "# mypy: ignore-errors\n" + "\n".join(lines) + "\n"


def installed_stub_files() -> list[tuple[Path, Path]]:
    """(absolute source, path relative to site-packages) of every .pyi the package installed."""
    try:
        files = metadata.files(DIST) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"{DIST} is not installed: pip install --no-deps {DIST} "
            "(--no-deps: its metadata pulls the real tensorrt, which downloads from NVIDIA)"
        ) from None
    out = []
    for file in files:
        rel = Path(str(file))
        if rel.suffix == ".pyi" and rel.parts[0] in PACKAGES:
            out.append((Path(str(file.locate())), rel))
    if not out:
        raise SystemExit(f"{DIST} is installed but lists no .pyi files under {PACKAGES}")
    return out


def build(dest: Path) -> list[Path]:
    for package in PACKAGES:
        shutil.rmtree(dest / package, ignore_errors=True)
    written = []
    for source, rel in installed_stub_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        text = repair(source.read_text("utf-8"))
        try:
            compile(text, str(target), "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
        except SyntaxError as exc:
            raise SystemExit(f"{rel} still does not parse after repair: {exc}") from None
        target.write_text(text, "utf-8")
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python {Path(__file__).name} OUTPUT_FOLDER", file=sys.stderr)
        return 2
    dest = Path(argv[0])
    build(dest)
    print(dest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
