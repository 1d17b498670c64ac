"""`bench`: thin on purpose. Parse, call, print, exit.

    bench                        run the bundled quickstart plan
    bench PLAN.yaml              run a plan (same as `bench run PLAN.yaml`)
    bench run --resume RUN_DIR   finish an interrupted run
    bench validate PLAN.yaml     check a plan and list its cells without running anything
    bench env [--json]           the environment a result would be recorded with
    bench report RUN_DIR         (re)render report.html, summary.md, results.csv from results
    bench compare A B            compare two runs cell by cell, process medians against process medians
    bench make-sample OUT        generate the COCO-format sample dataset
    bench serve PLAN --model M --runtime R   the detection endpoint for one cell, on loopback
    bench tune PLAN --budget map_drop=0.5    search the configurations the plan's models run here

Exit status: 0 success, 1 a cell failed / a gate tripped / a significant slowdown / the disk is
full, 2 bad input (the message names the file and field), 130 interrupted, 141 the reader of
the output went away (a closed pipe: `bench env --json | head`).
Nothing heavy is imported here: `bench --help` must stay fast and never import torch.
"""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

from harness import __version__
from harness.errors import UserError

COMMANDS = ("run", "validate", "env", "report", "compare", "make-sample", "merge", "serve", "tune")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a failed write of help or usage text is raised, not swallowed
    (Python's argparse ignores OSError there), so a closed pipe ends --help with 141 too."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (file or sys.stderr).write(message)


def _percent(text: str) -> float:
    """A threshold in percent: a finite number >= 0 (a negative one would flag every cell)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite percentage >= 0, got {text!r}")
    return value


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability such as 0.01, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1 (exclusive), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bench",
        description="Reproducible latency and accuracy benchmarks for exported object detectors. "
        "`bench PLAN.yaml` runs a plan; `bench` alone runs the bundled quickstart.",
    )
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a plan (the default command)")
    run.add_argument("plan", nargs="?", help="plan YAML file (default: the bundled quickstart)")
    run.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run in RUN_DIR")
    run.add_argument("--output", metavar="DIR", help="base folder for run folders (overrides the plan's `output`)")
    run.add_argument("--gpus", metavar="LIST", help="run GPU cells in parallel, one per GPU: 0,1,2,3 | 0-3 | all")
    run.add_argument("--ray", metavar="ADDRESS", help="run the cells on a Ray cluster: ray://HOST:10001, auto, local")

    merge = sub.add_parser("merge", help="join run folders measured separately into one new run folder")
    merge.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    merge.add_argument("--output", metavar="DIR", default="reports", help="base folder for the merged run")

    validate = sub.add_parser("validate", help="check a plan without running it")
    validate.add_argument("plan", help="plan YAML file")

    env = sub.add_parser("env", help="print the environment results are recorded with")
    env.add_argument("--json", action="store_true", help="emit JSON")
    env.add_argument("--device", action="append", default=None, help="device to describe (cuda:0, cpu); repeatable (default: every visible GPU)")

    report = sub.add_parser("report", help="render report.html, summary.md and results.csv from a run folder")
    report.add_argument("run_dir", help="run folder")

    compare = sub.add_parser("compare", help="compare two runs (folders or results.json files)")
    compare.add_argument("a", help="baseline run")
    compare.add_argument("b", help="candidate run")
    compare.add_argument("--threshold", type=_percent, default=5.0, metavar="PCT",
                         help="fail (exit 1) when a cell is significantly slower by more than PCT percent (default 5)")
    compare.add_argument("--alpha", type=_alpha, default=0.01, help="1 - the level of the change intervals (default 0.01: 99%% intervals)")
    compare.add_argument("--memory-threshold", type=_percent, default=10.0, metavar="PCT",
                         help="peak device memory or host RSS growth (%%) that counts as a regression (default 10)")
    compare.add_argument("--force", action="store_true", help="compare even when the environments' fingerprints differ")
    compare.add_argument("--out", metavar="DIR", help="folder for compare.html and compare.md")

    from harness.serve import listen_port  # light: the server stack is imported only when serving

    serve = sub.add_parser("serve", help="serve one cell of a plan over HTTP on loopback (POST /v1/detect, /metrics)")
    serve.add_argument("plan", help="plan YAML file")
    serve.add_argument("--model", required=True, help="the plan's model name")
    serve.add_argument("--runtime", required=True, help="the runtime as the plan names it (its label, else its name)")
    serve.add_argument("--precision", help="one of the plan's precisions (default: the first)")
    serve.add_argument("--batch", type=int, help="max batch of dynamic batching, one of the plan's batch sizes (default: the first)")
    serve.add_argument("--resolution", type=int, help="one of the model's resolutions (default: the first)")
    serve.add_argument("--nms", metavar="PLACEMENT", help="where NMS runs, one of the plan's NMS placements: host, device, "
                                                         "in_graph (default: the first)")
    serve.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=listen_port, default=8000, help="port, 0-65535 (default 8000; 0: any free port)")
    serve.add_argument("--max-seconds", type=float, help="stop by itself after this many seconds")
    serve.add_argument("--log", metavar="FILE", help="where the runtime's session and build logs go "
                                                     "(default: a new bench-serve-CELL-*.log in the system's temp folder)")

    tune = sub.add_parser("tune", help="search runtimes, precisions and speed options for the fastest "
                                       "configuration within an mAP budget (docs/tune.md)")
    tune.add_argument("plan", help="plan YAML file: its models, dataset and protocol (runtimes: the ones to search)")
    tune.add_argument("--budget", required=True, metavar="map_drop=POINTS",
                      help="AP points a configuration may lose against the FP32 baseline, e.g. map_drop=0.5")
    tune.add_argument("--latency", choices=("median", "p99"), default="median",
                      help="the latency statistic to minimise, per process, then the median over processes (default median)")
    tune.add_argument("--batch", default="1", metavar="LIST",
                      help="batch size, or several (1,4,8): throughput mode, compared per image (default 1)")
    tune.add_argument("--max-minutes", type=float, default=60.0, metavar="MIN",
                      help="time budget of the whole search (default 60)")
    tune.add_argument("--output", metavar="DIR", help="base folder for the run folders (overrides the plan's `output`)")

    sample = sub.add_parser("make-sample", help="generate the COCO-format sample dataset")
    sample.add_argument("out", help="output folder")
    sample.add_argument("--images", type=int, default=24, help="number of images (default 24)")
    sample.add_argument("--seed", type=int, default=0)
    return parser


def _normalise(argv: list[str]) -> list[str]:
    """`bench` alone and `bench PLAN.yaml` both mean `bench run ...`."""
    if not argv:
        return ["run"]
    first = argv[0]
    if first in COMMANDS or first.startswith("-"):
        return argv
    return ["run", *argv]


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a command killed by a closed pipe exits with


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(_normalise(list(sys.argv[1:] if argv is None else argv)))
        code = _dispatch(args)
        # What is still buffered must reach the reader now, where a closed pipe can be told
        # apart, not at the interpreter's exit (which prints "Exception ignored" and exits 120).
        sys.stdout.flush()
        return code
    except UserError as exc:
        return _fail(f"bench: error: {exc}", 2)
    except KeyboardInterrupt:
        return _fail("bench: interrupted", 130)
    except BrokenPipeError:
        return _reader_gone()
    except SystemExit:
        # argparse's --help and usage errors exit from inside parse_args; their text may still
        # sit in stdout's buffer (or not, with PYTHONUNBUFFERED): flush it here so a closed
        # pipe ends the same way either way.
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return _reader_gone()
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        return _fail(f"bench: error: no space left on the device (writing {exc.filename}); "
                     "free some space and run the command again", 1)


def _fail(message: str, code: int) -> int:
    try:
        print(message, file=sys.stderr)
    except BrokenPipeError:
        return _reader_gone()
    return code


def _reader_gone() -> int:
    """The output's reader went away: stop quietly (no traceback, nor one at exit's flush)."""
    from harness.run.progress import mute

    mute(sys.stdout)
    mute(sys.stderr)
    return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "env":
        return _env(args)
    if args.command == "report":
        from harness.report.render import render_run

        paths = render_run(Path(args.run_dir))
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    if args.command == "compare":
        from harness.report.compare import compare_runs

        code, text = compare_runs(
            Path(args.a), Path(args.b), threshold_pct=args.threshold, alpha=args.alpha,
            memory_threshold_pct=args.memory_threshold,
            force=args.force, out_dir=Path(args.out) if args.out else None,
        )
        print(text)
        return code
    if args.command == "merge":
        return _merge(args)
    if args.command == "serve":
        from harness.serve.server import serve_by_hand

        return serve_by_hand(args.plan, args.model, args.runtime, host=args.host, port=args.port,
                             precision=args.precision, batch=args.batch, resolution=args.resolution,
                             nms=args.nms, max_seconds=args.max_seconds, log_path=args.log)
    if args.command == "tune":
        return _tune(args)
    if args.command == "make-sample":
        from harness.accuracy.sample import make_sample_dataset

        images, annotations = make_sample_dataset(Path(args.out), n_images=args.images, seed=args.seed)
        print(f"images: {images}\nannotations: {annotations}")
        return 0
    raise UserError(f"unknown command {args.command!r}")


def _run(args: argparse.Namespace) -> int:
    from harness.run.execute import execute, reopen_run, start_run

    # Flags first: a bad one must not leave an empty run folder behind.
    if args.gpus and args.ray:
        raise UserError("give either --gpus (one host) or --ray (a cluster), not both")
    gpus = None
    if args.gpus:
        from harness.run.parallel import parse_gpus

        gpus = parse_gpus(args.gpus)
    if args.resume:
        if args.plan:
            raise UserError("give either a plan or --resume RUN_DIR, not both")
        store, loaded = reopen_run(Path(args.resume), check_paths=not args.ray)
    else:
        from harness.plan.load import load_plan

        # On a Ray cluster the plan's files (datasets, ONNX files, checkpoints) are where the
        # cells run, a shared volume this machine may not mount: the nodes check them.
        loaded = load_plan(args.plan, check_paths=not args.ray)
        store = start_run(loaded, Path(args.output) if args.output else None)
    return execute(store, loaded, gpus=gpus, ray_address=args.ray)


def _tune(args: argparse.Namespace) -> int:
    from harness.tune.search import Budget, parse_batches, parse_budget

    # Every flag before anything is read or run: a bad one leaves nothing behind.
    map_drop = parse_budget(args.budget)
    batches = parse_batches(args.batch)
    if not args.max_minutes > 0 or args.max_minutes == float("inf"):
        raise UserError(f"--max-minutes: expected a positive number of minutes, got {args.max_minutes!r}")
    from harness.tune.search import NothingSurvived, tune
    from harness.tune.space import load_tune_plan

    loaded, notes = load_tune_plan(args.plan)
    try:
        outcome = tune(loaded, Budget(map_drop, args.latency, batches, args.max_minutes),
                       output=Path(args.output) if args.output else None, notes=notes)
    except NothingSurvived as exc:
        return _fail(f"bench: error: {exc}", exc.exit_status)
    from harness.report.tune import print_tune_summary

    print_tune_summary(outcome.result, outcome.run_dir)
    return outcome.exit_status


def _merge(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.run.execute import exit_status, finalize, print_summary, reopen_run
    from harness.run.merge import merge_runs

    run_dir = merge_runs([Path(d) for d in args.run_dirs], Path(args.output))
    store, loaded = reopen_run(run_dir)
    store.acquire_lock()
    results = finalize(store, loaded)
    print_summary(results, Console(stderr=True), run_dir)
    store.release_lock()
    return exit_status(results, loaded)


def _validate(args: argparse.Namespace) -> int:
    from harness.plan.load import load_plan

    loaded = load_plan(args.plan)
    print(f"{loaded.display_name}: valid plan `{loaded.plan.name}`, {len(loaded.cells)} cell(s)")
    for cell in loaded.cells:
        marks = [m for m, on in (("reference", cell.is_reference), ("accuracy", cell.run_accuracy)) if on]
        print(f"  {cell.cell_id}  [{cell.device}]" + (f"  ({', '.join(marks)})" if marks else ""))
    random = [m.name for m in loaded.plan.models if m.weights == "random"]
    if random:
        print(f"note: random weights for {', '.join(random)}: latency is real, mAP will be meaningless")
    from harness.report.budgets import budget_label

    budgets: dict[str, str] = {}
    for cell in loaded.cells:
        if cell.budgets is not None:
            budgets.setdefault(cell.model.name, ", ".join(budget_label(k, v) for k, v in cell.budgets.flat().items()))
    for model, text in budgets.items():
        print(f"budgets for {model}: {text}")
    if loaded.plan.budgets is not None and loaded.plan.budgets.gate:
        print("budgets.gate: a failed budget makes `bench` exit 1")
    return 0


def _env(args: argparse.Namespace) -> int:
    import json

    from harness.environment.capture import capture_environment, format_environment

    # No --device: capture describes every GPU CUDA would number here (and reads CUDA/cuDNN
    # through torch when there is one).
    env = capture_environment(args.device or ())
    if args.json:
        print(json.dumps(env, indent=1, default=str))
    else:
        print(format_environment(env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
