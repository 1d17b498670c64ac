"""The plan: what a user writes in YAML, validated by pydantic.

Every model forbids unknown keys, so a typo is an error that names the field rather than a
setting silently ignored. Cross-field rules that need the whole plan (cells that cannot exist)
live in `harness.plan.cells`, which reports them with the same field paths.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from harness.plan.server import Scenario, ServerSpec
from harness.plan.strict import Strict

# int8: static post-training quantization (calibrated); int8-dynamic: weights quantized ahead,
# activations quantized at run time from their observed range (no calibration).
Precision = Literal["fp32", "fp16", "bf16", "int8", "int8-dynamic"]
Scope = Literal["model", "end_to_end"]
# Where the non-maximum suppression of a model that needs one runs (docs/models.md):
#   in_graph  inside the model: ONNX NonMaxSuppression in the exported file, or the eager
#             model's own NMS (the torch runtime); timed inside `infer`
#   host      on the CPU after the device-to-host copy (the harness's vectorised numpy NMS)
#   device    torchvision's batched_nms on the runtime's device, before the copy
NmsPlacement = Literal["in_graph", "host", "device"]

class SustainedSpec(Strict):
    """Run a cell for a set time and keep latency per window (thermal soak, clock drift)."""

    duration_s: Annotated[float, Field(gt=0)] = 300.0
    window_s: Annotated[float, Field(gt=0)] = 10.0


class LatencyProtocol(Strict):
    """How a cell is timed. Warm-up and measurement each stop only when BOTH their count and
    their time are met (trtexec and optimum-benchmark practice), measurement is capped."""

    warmup_iterations: Annotated[int, Field(ge=0)] = 10
    warmup_seconds: Annotated[float, Field(ge=0)] = 1.0
    min_iterations: Annotated[int, Field(ge=1)] = 100
    min_seconds: Annotated[float, Field(ge=0)] = 3.0
    max_iterations: Annotated[int, Field(ge=1)] = 100_000
    max_seconds: Annotated[float, Field(gt=0)] = 600.0
    pause_ms: Annotated[float, Field(ge=0)] = 0.0
    sustained: SustainedSpec | None = None
    # Fresh worker processes per cell (samples inside one process are not independent of each
    # other: the motion that matters is between processes). None: REPEATS_ON_GPU for a cell
    # that may run on a GPU, 1 for a CPU cell (see docs/performance.md for the evidence).
    repeats: Annotated[int, Field(ge=1, le=100)] | None = None

    @model_validator(mode="after")
    def _caps_above_minimums(self) -> LatencyProtocol:
        if self.max_iterations < self.min_iterations:
            raise ValueError(
                f"max_iterations ({self.max_iterations}) is below min_iterations "
                f"({self.min_iterations})"
            )
        if self.max_seconds < self.min_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds}) is below min_seconds ({self.min_seconds})"
            )
        return self


class ProtocolOverride(Strict):
    """Partial protocol: only the keys given replace the plan's."""

    warmup_iterations: Annotated[int, Field(ge=0)] | None = None
    warmup_seconds: Annotated[float, Field(ge=0)] | None = None
    min_iterations: Annotated[int, Field(ge=1)] | None = None
    min_seconds: Annotated[float, Field(ge=0)] | None = None
    max_iterations: Annotated[int, Field(ge=1)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None
    pause_ms: Annotated[float, Field(ge=0)] | None = None
    sustained: SustainedSpec | None = None
    repeats: Annotated[int, Field(ge=1, le=100)] | None = None


class RuntimeSpec(Strict):
    """A runtime with optional settings; `label` tells two configurations of one runtime apart
    (for example rfdetr-optimized with torchscript and with inductor)."""

    # A runtime plug-in's name (harness/runtimes/): checked against the registry when the plan
    # is expanded, so plan/ names no runtime.
    name: Annotated[str, Field(min_length=1, max_length=80)]
    label: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    reference: bool = False
    # This runtime's own precisions, replacing the plan's axis for it (a plan that compares
    # predict() FP32 with FP16+JIT and ONNX FP32 is not a full product).
    precisions: list[Precision] | None = None
    # This runtime's own batch sizes, replacing the model's and the plan's axis for it (a tuned
    # plan keeps each configuration at the batches it was chosen at).
    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] | None = None

    @property
    def key(self) -> str:
        return self.label or self.name


def _runtime_from_str(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class Preprocess(Strict):
    """How images become the model's input tensor (for a user's ONNX file; RF-DETR's is known)."""

    resize: Literal["stretch", "letterbox"] = "stretch"
    # strict=False: YAML and JSON give lists, which become the tuples.
    mean: tuple[float, float, float] = Field(default=(0.485, 0.456, 0.406), strict=False)
    std: tuple[float, float, float] = Field(default=(0.229, 0.224, 0.225), strict=False)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    # Pixel values are divided by this before mean/std (255 maps uint8 to [0, 1]).
    value_scale: Annotated[float, Field(gt=0)] = 255.0
    letterbox_fill: Annotated[int, Field(ge=0, le=255)] = 114


class NmsSpec(Strict):
    where: Literal["harness"] = "harness"
    iou_threshold: Annotated[float, Field(gt=0, le=1)] = 0.7
    class_agnostic: bool = False


class DecoderSpec(Strict):
    """How raw outputs become detections.

    rfdetr: `dets` (cxcywh, normalised) + `labels` (logits): sigmoid, top-k over queries x classes.
    yolo_end2end: boxes, scores, classes already filtered by the model (xyxy in input pixels).
    yolo_raw: (1, 4 + C, N) predictions; the harness runs NMS with the thresholds given.
    """

    kind: Literal["rfdetr", "yolo_end2end", "yolo_raw"] = "rfdetr"
    top_k: Annotated[int, Field(ge=1)] = 300
    score_threshold: Annotated[float, Field(ge=0, le=1)] = 0.0
    nms: NmsSpec | None = None
    # Output names, when the model's differ from the decoder's defaults.
    outputs: dict[str, str] = Field(default_factory=dict)


class LatencyBudget(Strict):
    """Latency limits in ms per batch: the cell's figures over its processes (p50: the headline,
    the median of the process medians; p90 and p99 over every sample of every process)."""

    p50: Annotated[float, Field(gt=0)] | None = None
    p90: Annotated[float, Field(gt=0)] | None = None
    p99: Annotated[float, Field(gt=0)] | None = None


class BudgetLimits(Strict):
    """What a configuration must meet to ship; each limit is judged per cell as pass, fail or
    not measured (with the reason). MB are 10^6 bytes. A model's `budgets` override the plan's
    key by key (`latency_ms` percentile by percentile); a key a model sets to null removes the
    plan's limit for that model."""

    latency_ms: LatencyBudget | None = None
    min_images_per_s: Annotated[float, Field(gt=0)] | None = None  # throughput over processes
    # Peak device memory of the timed phase (the torch allocator's peak on torch paths; NVML's
    # reading of the process above its baseline before the session on the others).
    device_memory_mb: Annotated[float, Field(gt=0)] | None = None
    host_memory_mb: Annotated[float, Field(gt=0)] | None = None  # the worker's peak RSS
    artifact_mb: Annotated[float, Field(gt=0)] | None = None  # the file that ran, on disk
    energy_per_image_j: Annotated[float, Field(gt=0)] | None = None  # joules per image, measurement phase
    # AP points (COCO AP50:95 x 100) the cell may lose against its model's reference cell.
    map_drop: Annotated[float, Field(ge=0)] | None = None
    min_map: Annotated[float, Field(ge=0, le=100)] | None = None  # AP points, absolute
    # Last sustained window's median against the first's, percent (protocol.sustained).
    sustained_slowdown_pct: Annotated[float, Field(ge=0)] | None = None

    def flat(self) -> dict[str, float]:
        """The limits that are set, as {"latency_ms.p99": 33.0, "device_memory_mb": 2000.0}."""
        out: dict[str, float] = {}
        for key, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, dict):
                out.update({f"{key}.{sub}": float(v) for sub, v in value.items() if v is not None})
            else:
                out[key] = float(value)
        return out

    def merged(self, override: BudgetLimits | None) -> BudgetLimits:
        """These limits with `override`'s explicitly set keys replacing them (None removes)."""
        data = {k: v for k, v in self.model_dump().items() if k in BudgetLimits.model_fields}
        if override is None:
            return BudgetLimits.model_validate(data)
        for key in override.model_fields_set:
            value = getattr(override, key)
            if key == "latency_ms" and value is not None and data.get("latency_ms") is not None:
                data["latency_ms"] = {**data["latency_ms"], **value.model_dump(exclude_unset=True)}
            else:
                data[key] = value.model_dump() if isinstance(value, BaseModel) else value
        return BudgetLimits.model_validate(data)


class PlanBudgets(BudgetLimits):
    # Exit 1 when a cell fails a budget (as `accuracy.gate` does for a tripped mAP gate); a
    # budget that was not measured never trips it (the report says so).
    gate: bool = False


class ModelSpec(Strict):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    # A model-source plug-in's name (harness/models/); none: the default source's (RF-DETR).
    # Which of the fields below a source uses, and what it requires, is the source's own check.
    source: Annotated[str, Field(min_length=1, max_length=80)] | None = None
    # rfdetr: the variant (nano, small, medium, large, xlarge, 2xlarge, seg-nano, ..., keypoint).
    variant: str | None = None
    # rfdetr: "random" (stated on purpose), "cache" (rfdetr's download cache, offline-safe),
    # or a path to a local checkpoint. onnx: the weights are the file itself.
    weights: str | None = None
    path: str | None = None  # onnx source: the .onnx file
    input_name: str | None = None
    class_names: list[str] | None = None  # onnx source: names in output index order
    preprocess: Preprocess | None = None
    decoder: DecoderSpec | None = None
    # Source-specific options, typed by the source plug-in.
    options: dict[str, Any] = Field(default_factory=dict)
    # Per-model overrides of the plan's axes and protocol.
    runtimes: list[Annotated[RuntimeSpec, Field()]] | None = None
    precisions: list[Precision] | None = None
    batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] | None = None
    resolutions: list[Annotated[int, Field(ge=32, le=4096)]] | None = None
    scopes: list[Scope] | None = None
    # NMS placements to time, replacing the plan's `nms` for this model.
    nms: list[NmsPlacement] | None = None
    protocol: ProtocolOverride | None = None
    # This model's limits, key by key over the plan's `budgets`.
    budgets: BudgetLimits | None = None

    @field_validator("runtimes", mode="before")
    @classmethod
    def _runtime_strings(cls, value: Any) -> Any:
        return [_runtime_from_str(v) for v in value] if isinstance(value, list) else value


class SubsetSpec(Strict):
    mode: Literal["all", "first", "random"] = "all"
    n: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _n_when_needed(self) -> SubsetSpec:
        if self.mode != "all" and self.n is None:
            raise ValueError(f"subset mode `{self.mode}` needs `n`, the number of images")
        return self


class CalibrationSplitSpec(Strict):
    """A calibration split held out of the dataset: the `images` best-ranked images of the whole
    annotations file (sha256 of "<seed>:<image id>", harness.accuracy.calibration). INT8
    calibration draws from it; every cell's accuracy pass reports on the other images."""

    images: Annotated[int, Field(ge=1, le=100_000)]
    seed: int = 0


class DatasetSpec(Strict):
    """A COCO-format dataset, or the project's generated sample (`sample: true`)."""

    sample: bool = False
    sample_images: Annotated[int, Field(ge=1, le=5000)] = 24
    images: str | None = None  # folder of images
    annotations: str | None = None  # instances JSON
    subset: SubsetSpec = SubsetSpec()
    calibration: CalibrationSplitSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if self.sample and (self.images or self.annotations):
            raise ValueError("give either `sample: true` or `images` + `annotations`, not both")
        if not self.sample and not (self.images and self.annotations):
            raise ValueError("a dataset needs `images` and `annotations`, or `sample: true`")
        if self.sample and self.calibration is not None and self.calibration.images >= self.sample_images:
            raise ValueError(
                f"calibration.images ({self.calibration.images}) must leave images for the accuracy pass: "
                f"the sample has {self.sample_images} (raise sample_images)"
            )
        return self


class ThresholdSplit(Strict):
    """Choose the score threshold on a validation split of the plan's dataset and report mAP on
    the rest (harness.accuracy.splits: images ranked by a seeded hash of their id, the rule
    TensorRT's calibration choice and `subset: {mode: random}` use, so those nest for one seed)."""

    # Share of the dataset's selected images in the validation split (at least one image on
    # each side); the rest is the report split, the one every mAP of the run is computed on.
    fraction: Annotated[float, Field(gt=0, lt=1)] = 0.5
    seed: int = 0
    # A detection counts as a true positive at this IoU with an unmatched box of its class.
    iou_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5


class AccuracySpec(Strict):
    enabled: bool = True
    # A cell whose AP50:95 falls more than this (absolute, 0..1 scale x100 = points) below
    # its model's reference is marked accuracy_regression.
    max_map_drop: Annotated[float, Field(ge=0)] | None = None
    # The same for the class that lost the most AP (points): per-class AP moves more than the
    # mean, so a small evaluation set needs a looser limit here.
    max_class_drop: Annotated[float, Field(ge=0)] | None = None
    # Exit non-zero when a cell is past max_map_drop.
    gate: bool = False
    agreement_images: Annotated[int, Field(ge=1)] = 8
    # Detections scoring below it take no part in the detection agreement with the reference.
    # 0.3 suits trained weights; random weights score far lower, so a plan of random-weight
    # models sets it lower (0 compares every kept detection).
    agreement_min_score: Annotated[float, Field(ge=0, le=1)] = 0.3
    gallery_images: Annotated[int, Field(ge=0)] = 4
    evaluator: Literal["pycocotools", "faster-coco-eval"] = "pycocotools"
    loader_workers: Annotated[int, Field(ge=0)] = 2
    # The F1-optimal score threshold, chosen on a validation split disjoint from the reported
    # one (the ship checklist's "score threshold chosen on validation"); None: no split, the
    # mAP is over every selected image and no threshold is chosen.
    threshold_split: ThresholdSplit | None = None


class GpuConditions(Strict):
    """Optional conditions before each cell. The harness never changes GPU settings."""

    cooldown_s: Annotated[float, Field(ge=0)] = 0.0
    wait_idle: bool = False
    max_start_temperature_c: Annotated[float, Field(gt=0)] | None = None
    wait_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    monitor_interval_ms: Annotated[float, Field(ge=10, le=50)] = 20.0
    # Sample NVML during warm-up and measurement. Off only to show the monitor's own cost.
    monitor: bool = True
    # Lock the GPU's clocks for the measurement (NVML; needs root or an admin-granted
    # permission) and restore them afterwards: true locks the SM clock at the GPU's default
    # applications clock, a number at that many MHz. Not permitted: the cell runs unlocked and
    # its record says why.
    lock_clocks: bool | Annotated[int, Field(ge=100, le=5000)] = False


class HostControls(Strict):
    """What the harness holds fixed on the host for every worker (docs/performance.md: why)."""

    # Pin the worker to cores on its GPU's NUMA node (NVML's CPU affinity of the GPU), the GPU
    # monitor's thread to a core of its own; on a CPU cell, to the cores this process may use.
    pin_cores: bool = True
    # Intra-op threads for torch, OMP and ONNX Runtime's CPU EP (when its settings name none);
    # None: the number of pinned worker cores.
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    # Python's garbage collector is off while a cell warms up and is measured (collected just
    # before): a collection inside a timed call is host time the model did not spend.
    gc_in_timed_loop: bool = False


class FleetSpec(Strict):
    """Where the cells may run beyond this host (used with `bench PLAN --ray ADDRESS`)."""

    # Ray accelerator types (T4, L4, A10G, A100-80G, H100...): each GPU cell runs once per type.
    gpu_types: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    max_retries: Annotated[int, Field(ge=0)] = 1
    wait_for_resources_s: Annotated[float, Field(ge=0)] = 0.0


class TuneSpec(Strict):
    """`tune:`: how `bench tune` searches (docs/tune.md). Ignored by `bench PLAN`."""

    # Images of the screening accuracy pass (the first N of the plan's evaluation images): a
    # candidate that drops past the budget there is pruned before it is timed at length.
    subset_images: Annotated[int, Field(ge=1, le=100_000)] = 50
    # The screening protocol (partial: only the keys given replace the defaults of docs/tune.md).
    screen_protocol: ProtocolOverride | None = None
    # Values to try per runtime and setting, replacing the plug-in's declared ones:
    # {onnxruntime-cpu: {graph_optimization_level: [all, basic]}}. Checked against each
    # runtime's settings schema by `bench validate`.
    options: dict[str, dict[str, Annotated[list[Any], Field(min_length=1)]]] = Field(default_factory=dict)
    # Configurations next to the winner (on the front, or the fastest within the budget) that
    # tuned.yaml keeps beside it.
    neighbours: Annotated[int, Field(ge=0, le=20)] = 2
    # At most this many candidates are screened (the rest are listed as not tried).
    max_candidates: Annotated[int, Field(ge=1, le=10_000)] = 200
    # Screening prunes a candidate whose mAP on the subset falls more than this many times the
    # budget below the baseline's: a few dozen images move mAP by more than the budget, so the
    # exact budget there would prune configurations the full pass keeps. The final verdict uses
    # the exact budget. At least 1 (below it, screening would be stricter than the verdict).
    screen_map_margin: Annotated[float, Field(ge=1.0, le=100.0)] = 2.0
    # A configuration ties with the fastest only when the test cannot tell them apart AND its
    # median is within this many percent of the fastest's: with 2-3 processes a side the test
    # cannot tell a 4x slower configuration from the fastest, which is no tie.
    tie_margin_pct: Annotated[float, Field(ge=0.0, le=100.0)] = 5.0


class Plan(Strict):
    name: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    description: str = ""
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")] = "auto"
    output: str = "reports"
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    # None: the default runtime plug-in's (eager PyTorch).
    runtimes: Annotated[list[RuntimeSpec], Field(min_length=1)] | None = None
    precisions: Annotated[list[Precision], Field(min_length=1)] = ["fp32"]
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1, le=1024)]], Field(min_length=1)] = [1]
    # None: each model's native resolution.
    resolutions: list[Annotated[int, Field(ge=32, le=4096)]] | None = None
    scopes: Annotated[list[Scope], Field(min_length=1)] = ["model"]
    # NMS placements as a plan axis (models whose decoder needs NMS); None: each model's own
    # placement, and cell ids without an NMS part. The first placement is the reference's.
    nms: Annotated[list[NmsPlacement], Field(min_length=1)] | None = None
    protocol: LatencyProtocol = LatencyProtocol()
    dataset: DatasetSpec | None = None
    accuracy: AccuracySpec = AccuracySpec()
    gpu: GpuConditions = GpuConditions()
    controls: HostControls = HostControls()
    fleet: FleetSpec = FleetSpec()
    cell_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    artifacts: str = "artifacts"  # cache of exported ONNX files and TensorRT engines
    # Include image decoding (JPEG -> pixels) in the end_to_end scope.
    time_decode: bool = False
    # single_stream: one process calls the model in a loop; server: each cell is an HTTP
    # endpoint under load (harness/serve), with `server:` saying which load.
    scenario: Scenario = "single_stream"
    server: ServerSpec | None = None
    # What a configuration must meet to ship (per model: ModelSpec.budgets), and whether a
    # failed budget makes `bench` exit 1.
    budgets: PlanBudgets | None = None
    tune: TuneSpec | None = None

    @field_validator("runtimes", mode="before")
    @classmethod
    def _runtime_strings(cls, value: Any) -> Any:
        return [_runtime_from_str(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _server_settings(self) -> Plan:
        if self.server is not None and self.scenario != "server":
            raise ValueError("`server:` settings are for `scenario: server`")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Plan:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"two models are named `{model.name}`; names must be unique")
            seen.add(model.name)
        return self
