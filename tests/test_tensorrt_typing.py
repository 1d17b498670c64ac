"""Type-checking the TensorRT runtime against `tensorrt-stubs`, and proof that mypy really reads
the stubs (as installed they are ignored by mypy, and every TensorRT name would be Any)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "tensorrt_stubs_for_mypy.py"


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("tensorrt_stubs_for_mypy", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stubs = _load_script()


def _needs_stubs_and_mypy() -> None:
    try:
        metadata.version("tensorrt-stubs")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")


def test_repair_renames_keyword_parameters() -> None:
    line = "    def get_workspace_size(self, in: list[int], out: list[int]) -> int:"
    assert stubs.repair_def_line(line) == "    def get_workspace_size(self, in_: list[int], out: list[int]) -> int:"


def test_repair_gives_late_parameters_a_default() -> None:
    line = "    def add(self, input: int, shift: Weights = None, channel_axis: int) -> ILayer:"
    assert stubs.repair_def_line(line) == "    def add(self, input: int, shift: Weights = None, channel_axis: int = ...) -> ILayer:"
    keyword_only = "    def f(self, a: int = 1, *, b: int) -> None:"
    assert stubs.repair_def_line(keyword_only) == keyword_only


def test_repair_spells_builtin_bool_but_leaves_tensorrts_bool() -> None:
    text = "\n".join(
        [
            "from __future__ import annotations",
            "__all__ = ['bool', 'Builder']",
            "class Builder:",
            "    def get_flag(self, flag: int) -> bool:",
            "        ...",
            "    x: dict[str, bool]",
            "    dtype = tensorrt.bool",
            "bool: DataType  # value = <DataType.BOOL: 4>",
        ]
    )
    out = stubs.repair(text).splitlines()
    assert out[0] == "# mypy: ignore-errors" and out[1] == "from __future__ import annotations"
    assert "import builtins" in out[2:5]
    assert "__all__ = ['bool', 'Builder']" in out
    assert "    def get_flag(self, flag: int) -> builtins.bool:" in out
    assert "    x: dict[str, builtins.bool]" in out
    assert "    dtype = tensorrt.bool" in out
    assert "bool: DataType  # value = <DataType.BOOL: 4>" in out


def test_installed_stubs_repair_into_parseable_files(tmp_path: Path) -> None:
    _needs_stubs_and_mypy()
    written = stubs.build(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"tensorrt/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"} <= names
    assert "class IExecutionContext" in (tmp_path / "tensorrt_bindings" / "tensorrt.pyi").read_text()


def _mypy(snippet: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    stubs.build(tmp_path / "typings")
    source = tmp_path / "snippet.py"
    source.write_text(snippet)
    env = {**os.environ, "MYPYPATH": str(tmp_path / "typings")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(source)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )


def test_mypy_resolves_the_stubs_a_wrong_call_is_an_error(tmp_path: Path) -> None:
    _needs_stubs_and_mypy()
    result = _mypy(
        "import tensorrt as trt\n"
        "logger = trt.Logger(trt.Logger.WARNING)\n"
        "network = trt.Builder(logger).create_network('strongly typed')\n"
        "reveal_type(trt.IExecutionContext.execute_async_v3)\n",
        tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Argument 1 to "create_network" of "Builder" has incompatible type "str"; expected "int"' in result.stdout
    # `-> bool` is the builtin (the stubs shadow it with trt.bool until repaired).
    assert "def (self: tensorrt_bindings.tensorrt.IExecutionContext, stream_handle: int) -> bool" in result.stdout


def test_mypy_accepts_correct_tensorrt_10_calls(tmp_path: Path) -> None:
    _needs_stubs_and_mypy()
    result = _mypy(
        "import tensorrt as trt\n"
        "logger = trt.Logger(trt.Logger.WARNING)\n"
        "builder = trt.Builder(logger)\n"
        "network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))\n"
        "config = builder.create_builder_config()\n"
        "config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)\n"
        "config.set_flag(trt.BuilderFlag.FP16)\n"
        "ok: bool = config.get_flag(trt.BuilderFlag.TF32)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
