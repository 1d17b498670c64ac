"""Fidelity of the measuring instrument: the harness against a plain loop, interleaved.

Run by hand (it is a benchmark, not a test):

    PYTHONPATH=. python benchmarks/fidelity.py --device cpu --iterations 30
    PYTHONPATH=. python benchmarks/fidelity.py --device cuda --iterations 600 --json fidelity.json

The same workload is timed two ways in one process:

* through the harness: `harness.measure.protocol.measure` (model scope) or `measure_stages`
  (end-to-end scope) with `harness.measure.timers.make_timer`;
* through a plain loop written here and nowhere else: CUDA events around each call on the
  stream (GPU) or `time.perf_counter` around each call (CPU); for end-to-end, perf_counter
  around the chained stages with no synchronisation between them.

The two alternate in blocks (harness first in even blocks, plain first in odd ones), so drift
from heat or clocks falls on both. Printed: both medians, their ratio (target: within 2%), and
the harness's own cost per iteration on an empty call (target: below 10 us on the GPU, 5 us on
the CPU): what the harness loop costs per iteration beyond the plain loop around the same
timer (clock reads, stop rules, appends, method calls). The whole loop's cost and the timer's
floor (what an empty call reads as) are printed too.

Workloads: a matrix product (many samples, steady), and RF-DETR Nano's core module built
offline with random weights, input 1x3x384x384, FP32 (and FP16 on the GPU), in model scope and
in end-to-end scope (numpy resize and normalise, host-to-device copy, forward pass,
device-to-host copy, a small top-k postprocess). `--threads 1` steadies a busy CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from harness.measure.protocol import measure, measure_stages
from harness.measure.stats import summarize
from harness.measure.timers import make_timer
from harness.plan.schema import LatencyProtocol
from harness.runtimes.base import Stage

RESOLUTION = 384
TARGET_RATIO = 0.02
TARGET_EMPTY_US = {"cuda": 10.0, "cpu": 5.0}


def block_protocol(n: int) -> LatencyProtocol:
    """Exactly n measured iterations, no warm-up (the workload is warmed once, up front)."""
    return LatencyProtocol(warmup_iterations=0, warmup_seconds=0.0, min_iterations=n, min_seconds=0.0, max_iterations=n)


# -- the plain loops (the independent reference) ---------------------------------------------


def plain_cpu(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    perf = time.perf_counter
    for _ in range(n):
        t0 = perf()
        call()
        samples.append((perf() - t0) * 1000.0)
    return samples


def make_plain_cuda(stream: Any) -> Callable[[Callable[[], object], int], list[float]]:
    import torch

    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def plain_cuda(call: Callable[[], object], n: int) -> list[float]:
        samples = []
        for _ in range(n):
            start.record(stream)
            call()
            end.record(stream)
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return samples

    return plain_cuda


# -- workloads -------------------------------------------------------------------------------


@dataclass
class Comparison:
    name: str
    scope: str
    precision: str
    harness_ms: list[float] = field(default_factory=list)
    plain_ms: list[float] = field(default_factory=list)
    # Median of each block, in run order: adjacent blocks saw the same machine state.
    harness_block_medians: list[float] = field(default_factory=list)
    plain_block_medians: list[float] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "scope": self.scope, "precision": self.precision}
        if self.error:
            out["error"] = self.error
            return out
        h, p = summarize(self.harness_ms), summarize(self.plain_ms)
        pairs = np.divide(self.harness_block_medians, self.plain_block_medians)
        out.update(
            harness_median_ms=h.p50,
            harness_median_ci95=h.median_ci95,
            harness_cov=h.cov,
            plain_median_ms=p.p50,
            plain_median_ci95=p.median_ci95,
            plain_cov=p.cov,
            ratio=h.p50 / p.p50,
            within_target=abs(h.p50 / p.p50 - 1.0) <= TARGET_RATIO,
            # Robust to the machine changing state between blocks (host-bound work on a shared
            # host): the median over block pairs of harness / plain block medians.
            paired_block_ratio=float(np.median(pairs)),
            n=len(self.harness_ms),
            blocks=len(pairs),
            harness_samples_ms=self.harness_ms,
            plain_samples_ms=self.plain_ms,
        )
        return out


def build_core(device: str) -> Any:
    from rfdetr import RFDETRNano

    model = RFDETRNano(pretrain_weights=None, device=device)
    core: Any = model.model.model
    # rfdetr 1.11.2 leaves the core module on the CPU even with device="cuda" (seen on an
    # H200): move it explicitly.
    return core.to(device).eval()


def e2e_stages(core: Any, device: str, dtype: Any, asynchronous: bool) -> list[Stage]:
    """Decoded image in, boxes out: the steps a deployment runs around the forward pass."""
    import torch

    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    size: dict[str, tuple[int, int]] = {}

    def preprocess(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        size["hw"] = (h, w)
        rows = (np.arange(RESOLUTION) * h // RESOLUTION).astype(np.intp)
        cols = (np.arange(RESOLUTION) * w // RESOLUTION).astype(np.intp)
        resized = image[rows[:, None], cols[None, :]].astype(np.float32) / 255.0
        normalised = (resized - mean) / std
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])

    def h2d(batch: np.ndarray) -> Any:
        return torch.from_numpy(batch).to(device=device, dtype=dtype)

    def infer(x: Any) -> Any:
        return core(x)

    def d2h(outputs: Any) -> dict[str, np.ndarray]:
        return {
            "logits": outputs["pred_logits"].float().cpu().numpy(),
            "boxes": outputs["pred_boxes"].float().cpu().numpy(),
        }

    def postprocess(raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, boxes = raw["logits"][0], raw["boxes"][0]
        scores = 1.0 / (1.0 + np.exp(-logits))
        flat = scores.reshape(-1)
        top = np.argpartition(flat, -300)[-300:]
        queries, classes = np.divmod(top, scores.shape[1])
        cx, cy, bw, bh = boxes[queries].T
        h, w = size["hw"]
        xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        return xyxy.T, flat[top], classes

    return [
        Stage("preprocess", preprocess),
        Stage("h2d", h2d, asynchronous=asynchronous),
        Stage("infer", infer, asynchronous=asynchronous),
        Stage("d2h", d2h),
        Stage("postprocess", postprocess),
    ]


def chain(stages: list[Stage], image: np.ndarray) -> Callable[[], object]:
    fns = [stage.fn for stage in stages]

    def run() -> object:
        value: Any = image
        for fn in fns:
            value = fn(value)
        return value

    return run


# -- the interleaved comparison --------------------------------------------------------------


def interleave(
    blocks: int,
    per_block: int,
    harness_block: Callable[[int], list[float]],
    plain_block: Callable[[int], list[float]],
    result: Comparison,
) -> None:
    for b in range(blocks):
        order = (harness_block, plain_block) if b % 2 == 0 else (plain_block, harness_block)
        for fn in order:
            samples = fn(per_block)
            if fn is harness_block:
                result.harness_ms.extend(samples)
                result.harness_block_medians.append(float(np.median(samples)))
            else:
                result.plain_ms.extend(samples)
                result.plain_block_medians.append(float(np.median(samples)))


def run_model_scope(
    name: str, precision: str, call: Callable[[], object], args: argparse.Namespace, env: dict
) -> Comparison:
    result = Comparison(name, "model", precision)
    timer = make_timer(env["stream"])
    plain = env["plain"]
    plain(call, args.warmup)
    measure(call, block_protocol(max(1, args.warmup)), timer)

    def harness_block(n: int) -> list[float]:
        return measure(call, block_protocol(n), timer).samples_ms

    interleave(args.blocks, env["per_block"], harness_block, lambda n: plain(call, n), result)
    return result


def run_e2e_scope(
    name: str, precision: str, stages: list[Stage], image: np.ndarray, args: argparse.Namespace,
    env: dict,
) -> Comparison:  # fmt: skip
    result = Comparison(name, "end_to_end", precision)
    stream, synchronize = env["stream"], env["synchronize"]
    whole = chain(stages, image)

    def plain_block(n: int) -> list[float]:
        samples = []
        perf = time.perf_counter
        for _ in range(n):
            synchronize()  # the device is idle at the start, as in the harness
            t0 = perf()
            whole()
            samples.append((perf() - t0) * 1000.0)
        return samples

    def harness_block(n: int) -> list[float]:
        res, _ = measure_stages(stages, lambda: image, block_protocol(n), stream, synchronize)
        return res.samples_ms

    plain_block(args.warmup)
    harness_block(max(1, args.warmup))
    interleave(args.blocks, env["per_block"], harness_block, plain_block, result)
    return result


def empty_call_cost(args: argparse.Namespace, env: dict) -> dict[str, Any]:
    """Per-iteration wall time of each loop around a call that does nothing."""
    timer = make_timer(env["stream"])
    plain = env["plain"]

    def empty() -> None:
        return None

    # Many short blocks and their median: on a busy machine one preemption (milliseconds) in a
    # long block would be charged to whichever loop it fell on.
    blocks = 100
    per_block = max(1, args.empty_iterations // blocks)
    proto = block_protocol(per_block)
    harness_us: list[float] = []
    plain_us: list[float] = []
    harness_floor: list[float] = []
    plain_floor: list[float] = []
    measure(empty, proto, timer)
    plain(empty, per_block)
    perf = time.perf_counter
    for b in range(blocks):
        for which in ("harness", "plain") if b % 2 == 0 else ("plain", "harness"):
            if which == "harness":
                t0 = perf()
                samples = measure(empty, proto, timer).samples_ms
                harness_us.append((perf() - t0) / per_block * 1e6)
                harness_floor.extend(samples)
            else:
                t0 = perf()
                samples = plain(empty, per_block)
                plain_us.append((perf() - t0) / per_block * 1e6)
                plain_floor.extend(samples)
    harness_cost = float(np.median(harness_us))
    plain_cost = float(np.median(plain_us))
    harness_floor_us = float(np.median(harness_floor)) * 1000.0
    plain_floor_us = float(np.median(plain_floor)) * 1000.0
    own_cost = harness_cost - plain_cost
    return {
        "iterations": per_block * blocks,
        # Whole loop per iteration: timer, clock reads, stop rules, appends (and, with CUDA
        # events, recording two events and waiting for the second, which any event loop pays).
        "harness_us_per_iteration": harness_cost,
        "plain_us_per_iteration": plain_cost,
        # The harness's own cost: what it adds to the plain loop around the same timer.
        "harness_extra_us": own_cost,
        # What an empty call reads as: the timer's floor, inside every sample.
        "harness_empty_sample_median_us": harness_floor_us,
        "plain_empty_sample_median_us": plain_floor_us,
        "harness_sample_bias_us": harness_floor_us - plain_floor_us,
        "target_us": TARGET_EMPTY_US[args.device],
        "within_target": own_cost < TARGET_EMPTY_US[args.device],
    }


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="measured iterations per path per workload (default: 600 cuda, 30 cpu)",
    )
    parser.add_argument("--blocks", type=int, default=None, help="interleaved blocks (default: 60 cuda, 6 cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per path")
    parser.add_argument("--empty-iterations", type=int, default=20_000)
    parser.add_argument("--matmul-iterations", type=int, default=1_200)
    parser.add_argument("--skip-model", action="store_true", help="only the empty-call cost")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and sample here")
    args = parser.parse_args(argv)  # fmt: skip
    cuda = args.device == "cuda"
    args.iterations = args.iterations or (600 if cuda else 30)
    args.blocks = args.blocks or (60 if cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (50 if cuda else 3)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda and not torch.cuda.is_available():
        print("--device cuda asked, but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    stream = torch.cuda.current_stream() if cuda else None
    env: dict[str, Any] = {
        "stream": stream,
        "synchronize": torch.cuda.synchronize if cuda else (lambda: None),
        "plain": make_plain_cuda(stream) if cuda else plain_cpu,
        "per_block": max(1, args.iterations // args.blocks),
    }
    report: dict[str, Any] = {
        "device": args.device,
        "device_name": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "iterations_per_path": env["per_block"] * args.blocks,
        "blocks": args.blocks,
        "threads": torch.get_num_threads(),
        "workloads": [],
    }
    print(f"device: {report['device_name']} ({args.device}), torch {torch.__version__}")

    report["empty_call"] = empty_call_cost(args, env)
    comparisons: list[Comparison] = []
    # A short, steady workload with many samples: on a busy machine its ratio says more about
    # the instrument than a few dozen RF-DETR forward passes can.
    size = 4096 if cuda else 384
    a = torch.randn(size, size, device=args.device)
    name = f"matmul {size}x{size} fp32"
    print(f"running {name} ...", flush=True)
    matmul_env = {**env, "per_block": max(1, args.matmul_iterations // args.blocks)}
    comparisons.append(run_model_scope(name, "fp32", functools.partial(torch.mm, a, a), args, matmul_env))
    if not args.skip_model:
        import rfdetr

        report["rfdetr"] = getattr(rfdetr, "__version__", "unknown")
        core = build_core(args.device)
        x = torch.randn(1, 3, RESOLUTION, RESOLUTION, device=args.device)
        image = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        precisions = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if cuda else [])
        with torch.inference_mode():
            for precision, dtype in precisions:
                model = core.to(dtype)
                inp = x.to(dtype)
                for scope in ("model", "end_to_end"):
                    name = f"rfdetr-nano {precision} {scope}"
                    print(f"running {name} ...", flush=True)
                    try:
                        if scope == "model":
                            call = functools.partial(model, inp)
                            comparisons.append(run_model_scope(name, precision, call, args, env))
                        else:
                            stages = e2e_stages(model, args.device, dtype, asynchronous=cuda)
                            comparisons.append(run_e2e_scope(name, precision, stages, image, args, env))
                    # Report a failing workload (FP16 on an odd build, say), keep the others.
                    except Exception as exc:
                        comparisons.append(Comparison(name, scope, precision, error=f"{type(exc).__name__}: {exc}"))
    report["workloads"] = [c.summary() for c in comparisons]

    print()
    print(f"{'workload':34} {'harness ms':>11} {'plain ms':>11} {'ratio':>7} {'paired':>7}  ratio within 2%")
    for row in report["workloads"]:
        if "error" in row:
            print(f"{row['name']:34} failed: {row['error']}")
            continue
        print(
            f"{row['name']:34} {row['harness_median_ms']:11.4f} {row['plain_median_ms']:11.4f} "
            f"{row['ratio']:7.4f} {row['paired_block_ratio']:7.4f}  "
            f"{'ok' if row['within_target'] else 'MISSED'}"
        )
    e = report["empty_call"]
    print()
    print(
        f"empty call, per iteration: harness loop {e['harness_us_per_iteration']:.2f} us, plain "
        f"loop {e['plain_us_per_iteration']:.2f} us; the harness's own cost "
        f"{e['harness_extra_us']:+.2f} us, target < {e['target_us']:g} us: "
        f"{'ok' if e['within_target'] else 'MISSED'}"
    )
    print(
        f"empty call, as a sample (timer floor): harness {e['harness_empty_sample_median_us']:.2f}"
        f" us, plain loop {e['plain_empty_sample_median_us']:.2f} us "
        f"(bias in every harness sample {e['harness_sample_bias_us']:+.2f} us)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
