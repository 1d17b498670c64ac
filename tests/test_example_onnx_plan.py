"""The README's worked example of a user's own ONNX model: the committed file is the one its
script writes, and `bench plans/onnx-detector.yaml` runs both scopes and the accuracy pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


def test_the_committed_example_model_is_what_the_script_writes(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_example_onnx.py"), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == (REPO / "examples" / "onnx" / "anchor-grid-320.onnx").read_bytes()


def test_the_onnx_example_plan_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness", str(REPO / "plans" / "onnx-detector.yaml"), "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "onnx-detector").iterdir()
    results = json.loads((run / "results.json").read_text())
    cells = {c["cell"]["scope"]: c for c in results["cells"]}
    assert set(cells) == {"model", "end_to_end"}
    for cell in cells.values():
        assert cell["status"] in ("ok", "unstable"), cell["reason"]
        assert cell["random_weights"] is True
        assert cell["settings"]["providers"][0] == "CPUExecutionProvider"
    stages = cells["end_to_end"]["latency"]["stages"]
    assert list(stages) == ["preprocess", "h2d", "infer", "d2h", "postprocess"]
    accuracy = cells["model"]["accuracy"]
    assert accuracy["images"] == 8 and 0.0 <= accuracy["bbox"]["AP"] <= 1.0
    assert (run / "report.html").is_file() and "random weights" in (run / "summary.md").read_text().lower()


def test_a_decoder_output_the_file_lacks_is_named_at_validate_and_at_run(tmp_path: Path) -> None:
    import numpy as np

    from harness.errors import UserError
    from harness.models.decode import named_output
    from harness.plan.schema import DecoderSpec

    plan = (REPO / "plans" / "onnx-detector.yaml").read_text().replace("{predictions: output0}", "{predictions: Identity}")
    assert "Identity" in plan
    path = tmp_path / "plan.yaml"
    path.write_text(plan.replace("../examples/", f"{REPO}/examples/"))
    done = subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "decoder.outputs.predictions" in done.stderr and "no output `Identity`" in done.stderr
    assert "its outputs are output0" in done.stderr and "Traceback" not in done.stderr

    # A file the plan check cannot read ahead (a .tflite) meets the same words when it runs.
    spec = DecoderSpec(kind="yolo_raw", outputs={"predictions": "Identity"})
    with pytest.raises(UserError, match=r"decoder.outputs.predictions: the model has no output `Identity`; .* output0"):
        named_output({"output0": np.zeros((1, 84, 10), np.float32)}, spec, "predictions")
