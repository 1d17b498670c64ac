"""Runtime and model-source plug-ins: every table the harness used to keep comes from them, and a
runtime added from outside the harness (one package, announced by an entry point, as
docs/adding-a-runtime.md shows) is validated and run like the built-in ones."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_onnx_runtime import tiny_detector

from harness.models.plugin import CAPABILITIES
from harness.models.registry import default_source, source_names, source_plugin
from harness.runtimes.plugin import RuntimePlugin, RuntimeSettings
from harness.runtimes.registry import default_runtime, plugin, plugins, runtime_class, runtime_names


def test_every_plugin_describes_itself_and_points_at_its_implementation() -> None:
    assert {"torch", "rfdetr-predict", "rfdetr-optimized", "onnxruntime-cpu", "onnxruntime-cuda",
            "onnxruntime-tensorrt", "tensorrt", "openvino-cpu", "litert-cpu"} <= set(runtime_names())
    for p in plugins():
        assert isinstance(p, RuntimePlugin) and p.device in ("cpu", "cuda", "any")
        assert p.precisions and p.scopes <= {"model", "end_to_end"}
        assert issubclass(p.settings, RuntimeSettings) and p.settings.model_config["extra"] == "forbid"
        assert p.libraries, p.name
        assert p.needs <= set(CAPABILITIES), p.name  # capabilities some model source can provide
        if p.name == "tensorrt":
            continue  # its implementation module imports fine, but only runs with TensorRT
        cls = runtime_class(p.name)
        assert cls.plugin is p and cls.name == p.name
    assert default_runtime() == "torch" and default_source() == "rfdetr"
    assert set(source_names()) >= {"rfdetr", "onnx"}
    assert source_plugin("onnx").provides == {"onnx"}


def test_validating_a_plan_imports_no_runtime_implementation(tmp_path: Path) -> None:
    plan = tmp_path / "p.yaml"
    plan.write_text("name: t\ndevice: cpu\nmodels: [{name: a, variant: nano, weights: random}]\n"
                    "runtimes: [torch, onnxruntime-cpu, rfdetr-predict]\nscopes: [end_to_end]\n")
    code = (
        "import sys; from harness.plan.load import load_plan\n"
        f"load_plan({str(plan)!r})\n"
        "bad = sorted(m for m in sys.modules if m.endswith('.runtime') or m.split('.')[0] in ('torch', 'onnxruntime', 'onnx', 'rfdetr'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_plugin_tables_decide_what_a_plan_may_ask_for() -> None:
    assert plugin("rfdetr-predict").scopes == {"end_to_end"}
    assert plugin("onnxruntime-cpu").device == "cpu" and plugin("tensorrt").device == "cuda"
    assert "int8" in plugin("tensorrt").precisions and "int8" not in plugin("torch").precisions


EXTERNAL_PACKAGE = '''
"""A runtime from outside the harness: ONNX Runtime's CPU EP with one thread, as its own plug-in."""
from harness.runtimes.onnxruntime import OrtSettings
from harness.runtimes.plugin import RuntimePlugin


class SingleThreadSettings(OrtSettings):
    # Whether ORT's thread spins between calls (session config "session.intra_op.allow_spinning").
    spin: bool = False


PLUGINS = [
    RuntimePlugin(
        name="ort-single-thread",
        title="single-thread ORT",
        summary="ONNX Runtime CPU EP pinned to one intra-op thread",
        implementation="benchext.runtime:SingleThreadOrt",
        device="cpu",
        precisions=frozenset({"fp32"}),
        settings=SingleThreadSettings,
        needs=frozenset({"onnx"}),
        libraries=("onnxruntime",),
    )
]
'''

EXTERNAL_RUNTIME = '''
from harness.runtimes.onnxruntime.runtime import OrtCpuRuntime

from benchext import PLUGINS


class SingleThreadOrt(OrtCpuRuntime):
    plugin = PLUGINS[0]

    def _session_options(self, options):
        so = super()._session_options(options)
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        return so
'''


def _install_external_plugin(root: Path) -> dict[str, str]:
    package = root / "benchext"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(EXTERNAL_PACKAGE))
    (package / "runtime.py").write_text(textwrap.dedent(EXTERNAL_RUNTIME))
    dist = root / "benchext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: benchext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[detbench.runtimes]\nbenchext = benchext\n")
    import os

    here = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([here, str(root), os.environ.get("PYTHONPATH", "")])}


def test_a_runtime_added_from_outside_validates_and_runs(tmp_path: Path) -> None:
    env = _install_external_plugin(tmp_path / "site")
    tiny_detector(tmp_path / "tiny.onnx")
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""
        name: ext
        device: cpu
        models:
          - {name: tiny, source: onnx, path: tiny.onnx, resolutions: [64],
             decoder: {kind: yolo_end2end, score_threshold: 0.1}}
        runtimes: [{name: ort-single-thread, settings: {spin: true}}]
        protocol: {warmup_iterations: 1, warmup_seconds: 0, min_iterations: 5, min_seconds: 0}
        gpu: {monitor: false}
    """))
    run = [sys.executable, "-m", "harness"]
    done = subprocess.run([*run, "validate", str(plan)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tiny__ort-single-thread__fp32__b1__r64__model" in done.stdout

    bad = plan.read_text().replace("spin: true", "spin: 3")
    plan.write_text(bad)
    done = subprocess.run([*run, "validate", str(plan)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "invalid single-thread ORT settings" in done.stderr, done.stderr
    plan.write_text(bad.replace("spin: 3", "spin: true"))

    done = subprocess.run([*run, str(plan), "--output", str(tmp_path / "reports")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    [record_file] = (tmp_path / "reports").glob("ext/*/cells/*.json")
    record = json.loads(record_file.read_text())
    assert record["status"] in ("ok", "unstable"), record.get("reason")
    assert record["settings"]["session_options"]["intra_op_num_threads"] == 1
    assert record["cell"]["runtime"]["name"] == "ort-single-thread"


def test_two_plugins_with_one_name_are_refused(tmp_path: Path) -> None:
    env = _install_external_plugin(tmp_path / "site")
    init = tmp_path / "site" / "benchext" / "__init__.py"
    init.write_text(init.read_text().replace('name="ort-single-thread"', 'name="torch"'))
    code = "from harness.runtimes.registry import runtime_names\nruntime_names()\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "two runtime plug-ins are named 'torch'" in done.stderr


@pytest.mark.parametrize("name", ["torch", "onnxruntime-cuda"])
def test_a_plugins_settings_error_names_its_title(name: str) -> None:
    from harness.runtimes.plugin import SettingsProblem

    with pytest.raises(SettingsProblem) as info:
        plugin(name).parse_settings({"nonsense": 1})
    assert f"invalid {plugin(name).title} settings" in info.value.describe("x")
