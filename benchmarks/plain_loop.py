"""An independent plain loop over the deployment benchmark's configurations, to check the
harness's figures (issue 10: a harness figure more than 10% away from this must be explained).

Written without any harness code on purpose: rfdetr, torch and onnxruntime called directly, 20
warm-up and 100 timed calls, medians. Run on the same card, right after the harness run:

    python benchmarks/plain_loop.py --variant medium --onnx artifacts/onnx/<key>/model.onnx --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def timed(call, warmup: int, iterations: int, events: bool) -> list[float]:
    import torch

    for _ in range(warmup):
        call()
    if events:
        torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        if events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="medium")
    parser.add_argument("--onnx", help="the harness's exported ONNX file for the same model")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    import rfdetr

    classes = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium",
               "seg-small": "RFDETRSegSmall", "keypoint": "RFDETRKeypointPreview"}
    torch.manual_seed(0)
    model = getattr(rfdetr, classes[args.variant])(pretrain_weights=None, device="cuda")
    model.model.model.to("cuda")
    res = model.model.resolution
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    out: dict[str, float] = {}

    def record(name: str, samples: list[float]) -> None:
        out[name] = statistics.median(samples)
        print(f"{name:40s} median {out[name]:8.3f} ms  (n={len(samples)})", flush=True)

    w, n = args.warmup, args.iterations
    record("predict-fp32 end_to_end", timed(lambda: model.predict(image, threshold=0.0), w, n, False))
    model.inference(dtype=torch.float16, compile_backend="torchscript")
    x = torch.randn(1, 3, res, res, device="cuda", dtype=torch.float16)
    module = model.model.inference_model
    with torch.inference_mode():
        record("fp16-jit model", timed(lambda: module(x), w, n, True))
    record("fp16-jit end_to_end", timed(lambda: model.predict(image, threshold=0.0), w, n, False))

    if args.onnx:
        import onnxruntime as ort

        batch = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
        cuda = ort.InferenceSession(
            args.onnx, providers=[("CUDAExecutionProvider", {"use_tf32": "0"})]
        )
        assert cuda.get_providers()[0] == "CUDAExecutionProvider", cuda.get_providers()
        binding = cuda.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0)
        binding.bind_ortvalue_input(cuda.get_inputs()[0].name, value)
        for output in cuda.get_outputs():
            binding.bind_output(output.name, "cuda", 0)
        record("onnxruntime-cuda model", timed(lambda: cuda.run_with_iobinding(binding), w, n, False))
        cpu = ort.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
        feed = {cpu.get_inputs()[0].name: batch}
        record("onnxruntime-cpu model", timed(lambda: cpu.run(None, feed), w, n, False))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"variant": args.variant, "device": torch.cuda.get_device_name(), "medians_ms": out}, handle, indent=1)


if __name__ == "__main__":
    main()
