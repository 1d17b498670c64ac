"""Plans: schema, friendly errors through the real CLI, expansion into cells."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.plan.load import load_plan, parse_plan

GOOD = """
name: t
device: cpu
models:
  - name: nano
    variant: nano
    weights: random
runtimes: [torch, onnxruntime-cpu]
precisions: [fp32]
batch_sizes: [1, 2]
scopes: [model, end_to_end]
"""


def bench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_good_plan_expands_to_the_product_of_its_axes(tmp_path: Path) -> None:
    loaded = load_plan(write(tmp_path, GOOD))
    assert len(loaded.cells) == 2 * 1 * 2 * 2  # runtimes x precisions x batches x scopes
    ids = [c.cell_id for c in loaded.cells]
    assert len(set(ids)) == len(ids)
    # the reference (torch fp32) comes first and is marked; accuracy only in the first scope
    assert loaded.cells[0].runtime.name == "torch" and loaded.cells[0].is_reference
    assert all(c.resolution == 384 for c in loaded.cells)  # Nano's native resolution
    assert {c.device for c in loaded.cells} == {"cpu"}
    assert len(loaded.sha256) == 64


def test_per_model_overrides_and_protocol_merge(tmp_path: Path) -> None:
    plan = write(tmp_path, """
        name: t
        device: cpu
        protocol: {warmup_iterations: 3, min_iterations: 20}
        models:
          - name: a
            variant: nano
            weights: random
            resolutions: [320, 416]
            protocol: {min_iterations: 50}
          - name: b
            variant: seg-nano
            weights: random
    """)
    cells = load_plan(plan).cells
    a = [c for c in cells if c.model.name == "a"]
    b = [c for c in cells if c.model.name == "b"]
    assert sorted(c.resolution for c in a) == [320, 416]
    assert a[0].protocol.min_iterations == 50 and a[0].protocol.warmup_iterations == 3
    assert b[0].protocol.min_iterations == 20 and b[0].resolution == 312


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nruntimes: [tensorflow]\n",
         "runtimes[0].name: got 'tensorflow'; expected one of"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nprotocol: {warmup_iterations: -1}\n",
         "protocol.warmup_iterations: Input should be greater than or equal to 0"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nbatch_sizes: one\n",
         "batch_sizes: Input should be a valid list"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nbatch_sizes: [x]\n",
         "batch_sizes[0]: Input should be a valid integer"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nwarmup: 3\n",
         "warmup: unknown key"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random, colour: red}]\n",
         "models[0].colour: unknown key"),
        ("name: t\nmodels: [{name: a, variant: nano}]\n", "models[0]: an rfdetr model needs `weights`"),
        ("models: [{name: a, variant: nano, weights: random}]\n", "name: required, but missing"),
        ("name: t\nmodels: []\n", "models: List should have at least 1 item"),
        ("name: t\nmodels: [{name: a, variant: huge, weights: random}]\n",
         "models[0].variant: unknown RF-DETR variant `huge`"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random, resolutions: [390]}]\n",
         "models[0].resolutions: RF-DETR nano needs a resolution that is a multiple of 32"),
        ("name: t\ndevice: cpu\nprecisions: [fp16]\nmodels: [{name: a, variant: nano, weights: random}]\n",
         "precisions: fp16 needs a GPU"),
        ("name: t\ndevice: cpu\nruntimes: [onnxruntime-cuda]\nmodels: [{name: a, variant: nano, weights: random}]\n",
         "runtime onnxruntime-cuda needs a GPU but the plan's device is cpu"),
        ("name: t\ndevice: tpu\nmodels: [{name: a, variant: nano, weights: random}]\n",
         "device: String should match pattern"),
        ("name: t\nprotocol: {min_iterations: 10, max_iterations: 5}\nmodels: [{name: a, variant: nano, weights: random}]\n",
         "max_iterations (5) is below min_iterations (10)"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}, {name: a, variant: small, weights: random}]\n",
         "two models are named `a`"),
        ("name: t\nmodels: {name: a}\n", "models: Input should be a valid list"),
        ("- just\n- a list\n", "expected a YAML mapping at the top level, found a list"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random\n", "YAML syntax error at line"),
        ("name: [unclosed\n", "YAML syntax error"),
        ("name: t\nmodels: [{name: a, variant: nano, weights: random}]\n"
         "runtimes: [{name: tensorrt, settings: {workspace_gb: 4}}]\n",
         "runtimes[tensorrt].settings (model a): invalid TensorRT settings:\n  workspace_gb: unknown TensorRT setting"),
        ("", "the file is empty"),
        ("# only a comment\n", "holds no YAML content"),
    ],
)
def test_bad_plans_name_the_field_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_plan(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_cli_errors_have_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nmodels: [{name: a, variant: nano, weights: random}]\nruntimes: [tensorflow]\n")
    for args, message in [
        (["validate", str(bad)], "expected one of"),
        (["validate", str(tmp_path / "missing.yaml")], "no such plan file"),
        (["validate", str(tmp_path)], "is a directory"),
        ([str(bad)], "expected one of"),  # `bench PLAN` runs: validation happens first
    ]:
        done = bench(*args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr


def test_binary_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="not a text file"):
        load_plan(path)


def test_validate_lists_cells(tmp_path: Path) -> None:
    done = bench("validate", str(write(tmp_path, GOOD)))
    assert done.returncode == 0, done.stderr
    assert "8 cell(s)" in done.stdout
    assert "nano__torch__fp32__b1__r384__model" in done.stdout
    assert "random weights" in done.stdout


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from harness import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules, sorted(sys.modules)\n"
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) < 0.5


def test_bundled_quickstart_matches_plans_folder() -> None:
    root = Path(__file__).resolve().parents[1]
    bundled = (root / "harness" / "data" / "quickstart.yaml").read_text()
    assert bundled == (root / "plans" / "quickstart.yaml").read_text()
    loaded = parse_plan(bundled, "<bundled>", root)
    assert loaded.plan.models[0].weights == "random"


def test_every_plan_in_plans_folder_validates() -> None:
    root = Path(__file__).resolve().parents[1]
    plans = sorted((root / "plans").glob("*.yaml"))
    assert plans
    for plan in plans:
        # The files a plan names (COCO, checkpoints) are fetched by the user first; whether
        # they exist is checked by test_a_plan_naming_absent_data_fails_validation_here.
        assert load_plan(plan, check_paths=False).cells, plan
