"""Plans that must be refused before anything runs, each with exit 2 and a message naming the
file, the field and what was expected; never a traceback, never a cell that fails at run time
for a reason knowable up front."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

MODEL = "models: [{name: a, variant: nano, weights: random}]\n"


def validate(tmp_path: Path, text: str, name: str = "plan.yaml") -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True, timeout=120
    )


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr


# -- YAML that is hostile or ambiguous ----------------------------------------------------------


def test_an_alias_bomb_in_runtime_settings_is_refused_quickly(tmp_path: Path) -> None:
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
             for i in range(1, 9)]
    settings = "{" + ", ".join(bomb) + "}"
    text = f"name: t\n{MODEL}runtimes: [{{name: torch, settings: {settings}}}]\n"
    assert len(text) < 1200
    started = time.monotonic()
    done = validate(tmp_path, text)
    refused(done, "expands to more than", "aliases")
    assert time.monotonic() - started < 30


def test_deep_nesting_is_refused_with_where(tmp_path: Path) -> None:
    text = f"name: t\n{MODEL}description: " + "[" * 10_000 + "]" * 10_000 + "\n"
    refused(validate(tmp_path, text), "nested deeper than", "description")
    block = f"name: t\n{MODEL}runtimes:\n  - name: torch\n    settings:\n" + "".join(
        "      " + "  " * i + f"k{i}:\n" for i in range(200)
    ) + "      " + "  " * 200 + "v: 1\n"
    refused(validate(tmp_path, block), "nested deeper than", "runtimes[0].settings.k0")


def test_a_huge_integer_is_refused_with_its_field(tmp_path: Path) -> None:
    text = f"name: t\n{MODEL}batch_sizes: [{'9' * 5001}]\n"
    refused(validate(tmp_path, text), "batch_sizes[0]", "digits")


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    text = f"name: t\n{MODEL}protocol:\n  min_iterations: 100\n  warmup_iterations: 3\n  min_iterations: 5\n"
    refused(validate(tmp_path, text), "protocol.min_iterations", "`min_iterations` is given twice", "line 4", "line 6")
    top = f"name: t\n{MODEL}name: u\n"
    refused(validate(tmp_path, top), "`name` is given twice (line 1 and line 3)")


def test_a_plan_file_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    text = f"name: t\n{MODEL}description: '" + "x" * (2 << 20) + "'\n"
    refused(validate(tmp_path, text), "a plan is at most")


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("protocol: {min_seconds: .inf}\n", "protocol.min_seconds"),
        ("protocol: {max_seconds: .nan}\n", "protocol.max_seconds"),
        ("cell_timeout_s: .inf\n", "cell_timeout_s"),
        ("gpu: {wait_timeout_s: .inf}\n", "gpu.wait_timeout_s"),
        ("batch_sizes: [true]\n", "batch_sizes[0]"),
        ("protocol: {min_iterations: '100'}\n", "protocol.min_iterations"),
        ("accuracy: {enabled: 1}\n", "accuracy.enabled"),
        ("protocol: {pause_ms: false}\n", "protocol.pause_ms"),
    ],
)
def test_non_finite_numbers_and_mistyped_scalars_are_refused(tmp_path: Path, line: str, field: str) -> None:
    refused(validate(tmp_path, f"name: t\n{MODEL}{line}"), field)


# -- what would fail every cell at run time --------------------------------------------------


def test_a_dataset_that_is_not_there_is_refused(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    missing_ann = "dataset: {images: images, annotations: instances.json}\n"
    refused(validate(tmp_path, f"name: t\n{MODEL}{missing_ann}"), "dataset.annotations", "instances.json", "does not exist")
    (tmp_path / "instances.json").write_text("{}")
    missing_images = "dataset: {images: pictures, annotations: instances.json}\n"
    refused(validate(tmp_path, f"name: t\n{MODEL}{missing_images}"), "dataset.images", "pictures", "a folder of images")
    swapped = "dataset: {images: instances.json, annotations: images}\n"
    refused(validate(tmp_path, f"name: t\n{MODEL}{swapped}"), "dataset.images", "dataset.annotations")


def test_an_onnx_file_that_is_not_there_is_refused(tmp_path: Path) -> None:
    text = "name: t\ndevice: cpu\nmodels: [{name: d, source: onnx, path: det.onnx, resolutions: [64]}]\nruntimes: [onnxruntime-cpu]\n"
    refused(validate(tmp_path, text), "models[0].path", "det.onnx", "does not exist")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("{graph_opt: all}", "graph_opt: unknown ONNX Runtime setting"),
        ("{intra_op_num_threads: two}", "intra_op_num_threads"),
        ("{intra_op_num_threads: -1}", "intra_op_num_threads"),
        ("{graph_optimization_level: fastest}", "graph_optimization_level"),
        ("{tf32: true}", "tf32: unknown ONNX Runtime setting"),  # a CUDA EP setting on the CPU EP
        ("{provider_options: {arena: [1, 2]}}", "provider_options.arena"),
    ],
)
def test_onnxruntime_settings_are_typed_at_validate(tmp_path: Path, settings: str, expected: str) -> None:
    text = f"name: t\ndevice: cpu\n{MODEL}runtimes: [{{name: onnxruntime-cpu, settings: {settings}}}]\n"
    refused(validate(tmp_path, text), "runtimes[onnxruntime-cpu].settings (model a)", expected)


@pytest.mark.parametrize(
    ("runtime", "expected"),
    [
        ("{name: torch, settings: {compile: true}}", "compile: unknown PyTorch setting"),
        ("{name: rfdetr-optimized, settings: {compile_backend: jit}}", "compile_backend"),
        ("{name: rfdetr-predict, settings: {threshold: 2}}", "threshold"),
    ],
)
def test_every_runtimes_settings_are_typed(tmp_path: Path, runtime: str, expected: str) -> None:
    refused(validate(tmp_path, f"name: t\ndevice: cpu\n{MODEL}runtimes: [{runtime}]\n"), expected)


def test_a_torch_runtime_on_an_onnx_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "det.onnx").write_bytes(b"not read at validate")
    text = "name: t\ndevice: cpu\nmodels: [{name: d, source: onnx, path: det.onnx, resolutions: [64]}]\nruntimes: [torch, rfdetr-predict]\n"
    refused(validate(tmp_path, text), "runtimes[0]: runtime torch needs a PyTorch model",
            "runtimes[1]: runtime rfdetr-predict needs an rfdetr model object")


def test_an_unknown_model_source_lists_the_known_ones(tmp_path: Path) -> None:
    refused(validate(tmp_path, "name: t\nmodels: [{name: a, source: keras}]\n"), "models[0].source", "'keras'", "'rfdetr'")


def test_weights_that_are_not_a_checkpoint_say_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    text = "name: t\nmodels: [{name: a, variant: nano, weights: notes.txt}]\n"
    refused(validate(tmp_path, text), "models[0].weights", "is not a PyTorch checkpoint", "torch.save")
    text = "name: t\nmodels: [{name: a, variant: nano, weights: ../../nowhere/x.pth}]\n"
    refused(validate(tmp_path, text), "models[0].weights", "does not exist", "`random`")


def test_weights_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    refused(validate(tmp_path, "name: t\nmodels: [{name: a, variant: nano, weights: ckpt}]\n"), "is not a file")


def test_fields_of_another_source_are_refused(tmp_path: Path) -> None:
    (tmp_path / "det.onnx").write_bytes(b"x")
    refused(validate(tmp_path, "name: t\nmodels: [{name: a, variant: nano, weights: random, path: det.onnx}]\n"),
            "models[0].path", "for onnx models")
    text = "name: t\ndevice: cpu\nmodels: [{name: d, source: onnx, path: det.onnx, resolutions: [64], weights: cache}]\nruntimes: [onnxruntime-cpu]\n"
    refused(validate(tmp_path, text), "models[0].weights", "the file itself")


def test_colliding_cell_ids_name_both_models(tmp_path: Path) -> None:
    text = "name: t\nmodels: [{name: det a, variant: nano, weights: random}, {name: det/a, variant: nano, weights: random}]\n"
    refused(validate(tmp_path, text), "`det a`", "`det/a`", "same cell id", "det-a__torch__fp32__b1__r384__model")


def test_colliding_runtime_labels_name_both(tmp_path: Path) -> None:
    text = (f"name: t\ndevice: cpu\n{MODEL}runtimes: [{{name: torch, label: 'eager fp32'}}, "
            "{name: torch, label: 'eager/fp32'}]\n")
    refused(validate(tmp_path, text), "`eager fp32`", "`eager/fp32`", "same cell id")


def test_a_plan_naming_absent_data_fails_validation_here(tmp_path: Path) -> None:
    """The published-table plan names COCO, which is fetched by the user first."""
    plan = Path(__file__).resolve().parents[1] / "plans" / "rfdetr-published.yaml"
    if (plan.parent / "../datasets/coco/val2017").resolve().is_dir():
        pytest.skip("COCO is fetched here")
    done = subprocess.run([sys.executable, "-m", "harness", "validate", str(plan)], capture_output=True, text=True, timeout=120)
    refused(done, "dataset.images", "scripts/fetch-coco.sh")
