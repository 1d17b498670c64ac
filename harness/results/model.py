"""The typed results model: what a cell record, a run's metadata and results.json hold.

One model writes and reads: the worker builds a `CellRecord`, finalize a `ResultsFile`, and the
report, `bench compare`, `bench merge` and resume read them back through the same classes
(harness.results.files loads, harness.results.migrate upgrades older versions). Every model
refuses keys it does not know (`extra="forbid"`): a field the writer and the reader disagree on
is an error at once, not a number silently left out. Free-form read-backs from libraries (a
runtime's `settings`, a model source's facts) are `dict[str, JsonValue]` on purpose.

The schema, field by field with units, and its version history: docs/results-schema.md.
This module imports nothing else of the harness (the measuring instrument imports it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from harness.results.serve import ServeResult

# Bump for every change of the written shape, add a migration (harness.results.migrate) and a
# line to the version history in docs/results-schema.md.
SCHEMA_VERSION = 3

Status = Literal["ok", "unstable", "throttled", "accuracy_regression", "skipped", "failed"]

# When a cell has several flags, its status is the most severe one.
STATUS_ORDER: list[str] = ["failed", "skipped", "accuracy_regression", "throttled", "unstable", "ok"]

# Statuses whose latency is a measurement (possibly flagged); the others have none to rank.
MEASURED_STATUSES = frozenset({"ok", "unstable", "throttled", "accuracy_regression"})

Scope = Literal["model", "end_to_end"]
# What a cell's weights are, as far as the harness can know: a checkpoint it loaded (rfdetr's
# trained weights from the cache, or the plan's checkpoint file), weights it drew at random on
# purpose, or whatever an ONNX file carries (the harness cannot tell whether it was trained).
WeightsKind = Literal["trained", "random", "from_file"]
Number = int | float


def _json_values(value: Any) -> Any:
    """A library's read-back as the JSON it will be written as (tuples as lists, paths and
    other objects as their text), so a free-form block validates exactly as it is stored."""
    return json.loads(json.dumps(value, default=str)) if isinstance(value, dict) else value


# Free-form on purpose: what a library or a model source reports, verbatim.
FreeForm = Annotated[dict[str, JsonValue], BeforeValidator(_json_values)]


def worst_status(flags: Sequence[str]) -> Status:
    """The most severe status among `flags` (flags that are no status are ignored), else ok."""
    for status in STATUS_ORDER:
        if status in flags:
            return status  # type: ignore[return-value]  # a member of STATUS_ORDER is a Status
    return "ok"


class Frozen(BaseModel):
    """Immutable, and strict about keys: an unknown key is a validation error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Sparse(Frozen):
    """A record part whose unset facts are left out of the JSON (null fields are not written),
    for blocks where which facts exist depends on the backend or on what could be derived."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


# ----------------------------------------------------------------------------- identity


class SustainedProtocol(Frozen):
    duration_s: float  # seconds of measurement
    window_s: float  # seconds per window


class Protocol(Frozen):
    """The latency protocol the cell ran under: the plan's `protocol` with the model's overrides."""

    warmup_iterations: int
    warmup_seconds: float
    min_iterations: int
    min_seconds: float
    max_iterations: int
    max_seconds: float
    pause_ms: float  # pause between timed calls, outside the timed region
    sustained: SustainedProtocol | None = None
    repeats: int = 1  # fresh worker processes the cell is measured in


class DatasetSubset(Frozen):
    mode: str  # all | first | random
    n: int | None = None
    seed: int = 0


class CalibrationSplitRef(Frozen):
    images: int  # images held out for INT8 calibration
    seed: int = 0


class DatasetRef(Frozen):
    """The dataset the plan named for the accuracy pass (and the end-to-end images)."""

    sample: bool  # the generated sample dataset
    sample_images: int  # its size, when `sample`
    images: str | None  # folder of images (as the plan wrote it)
    annotations: str | None  # COCO instances JSON (as the plan wrote it)
    subset: DatasetSubset
    # The calibration split held out of the accuracy pass (`dataset.calibration`), if any.
    calibration: CalibrationSplitRef | None = None


class CellIdentity(Frozen):
    """What the cell is, typed: readers take every fact from here, never from the cell id."""

    model: str  # the plan's model name
    source: str  # model source: rfdetr | onnx
    variant: str | None  # RF-DETR variant (nano, seg-small...), None for other sources
    weights: str | None  # the plan's `weights` as given: cache, random, a checkpoint path; None for onnx
    weights_kind: WeightsKind
    runtime: str  # the runtime's registry name (torch, onnxruntime-cuda, tensorrt...)
    runtime_label: str | None  # the plan's label for it, when it gave one
    precision: str  # fp32 | fp16 | bf16 | int8
    batch: int  # images per call
    resolution: int  # model input side, pixels
    scope: Scope
    device: str  # the device the worker was given: cpu, cuda:N, auto
    is_reference: bool  # the model's reference cell for mAP deltas and speed-ups
    time_decode: bool  # end_to_end timing includes JPEG decoding
    protocol: Protocol
    dataset: DatasetRef | None
    max_map_drop: float | None  # the plan's accuracy gate, AP points; None = no gate
    max_class_drop: float | None = None  # the gate on the class that lost the most AP, points
    # "server": an HTTP endpoint under load (CellRecord.serve); None: the single-stream loop.
    scenario: Literal["server"] | None = None
    # Where the model's NMS ran, in a plan with an `nms` axis: in_graph | host | device; None
    # otherwise (no axis, or a model without NMS).
    nms: str | None = None
    # Detections below this score take no part in the detection agreement (the plan's
    # accuracy.agreement_min_score); None: the default 0.3 (files written before it existed).
    agreement_min_score: float | None = None
    # The limits the cell is judged against (the plan's `budgets` with its model's over them),
    # flat: {"latency_ms.p99": 33.0, "device_memory_mb": 2000.0}; None: no budget applies.
    budgets: dict[str, float] | None = None

    @property
    def runtime_key(self) -> str:
        """The runtime as the plan names it in this model: its label, else its name."""
        return self.runtime_label or self.runtime

    @property
    def configuration(self) -> tuple[str, str, str, int, int] | tuple[str, str, str, int, int, str]:
        """(model, runtime key, precision, batch, resolution[, nms placement]): the cells that
        share an artifact and its accuracy pass (the two scopes of one configuration)."""
        base = (self.model, self.runtime_key, self.precision, self.batch, self.resolution)
        return base if self.nms is None else (*base, self.nms)


# ----------------------------------------------------------------------------- latency


class Stats(Frozen):
    """Derived from samples_ms by harness.measure.stats.summarize; never edited by hand. ms."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    cov: float  # std / mean
    median_ci95: tuple[float, float]  # bootstrap 95% CI of the median
    median_ci_rel_width: float  # (hi - lo) / median


class StageTiming(Frozen):
    samples_ms: list[float]
    stats: Stats


class Window(Frozen):
    """One time window of a sustained run."""

    start_s: float
    end_s: float
    stats: Stats
    sm_clock_mhz_median: Number | None = None
    temperature_c_max: Number | None = None


class Latency(Frozen):
    scope: Scope
    timer: str  # "cuda_event" | "perf_counter" | ...: which clock produced samples_ms
    timed_region: str  # plain words: what is inside the timed region
    samples_ms: list[float]  # per batch, measurement phase only (warm-up excluded)
    # Host time per call until the call returned (before waiting for the device); with
    # samples_ms it tells launch-bound work apart.
    host_samples_ms: list[float] | None = None
    stats: Stats
    warmup_iterations: int
    warmup_s: float
    measure_s: float
    stop_reason: str  # "min_iterations_and_min_seconds" | "max_iterations" | "max_seconds" | "sustained"
    batch: int
    throughput_ips: float  # images per second = batch / median latency
    stages: dict[str, StageTiming] | None = None  # end_to_end: preprocess, h2d, infer, d2h, postprocess
    windows: list[Window] | None = None  # sustained mode
    unstable_reasons: list[str] = Field(default_factory=list)
    launch_bound: bool | None = None


# ----------------------------------------------------------------------------- accuracy


class CocoMetrics(Frozen):
    """pycocotools' summary for bbox or segm, on its 0..1 scale; None where it reports -1."""

    AP: float | None = None
    AP50: float | None = None
    AP75: float | None = None
    AP_small: float | None = None
    AP_medium: float | None = None
    AP_large: float | None = None
    AR1: float | None = None
    AR10: float | None = None
    AR100: float | None = None
    AR_small: float | None = None
    AR_medium: float | None = None
    AR_large: float | None = None
    per_class: dict[str, float | None] = Field(default_factory=dict)


class KeypointMetrics(Frozen):
    AP: float | None = None
    AP50: float | None = None
    AP75: float | None = None
    AP_medium: float | None = None
    AP_large: float | None = None
    AR: float | None = None
    AR50: float | None = None
    AR75: float | None = None
    AR_medium: float | None = None
    AR_large: float | None = None
    per_class: dict[str, float | None] = Field(default_factory=dict)


class ImageSplit(Frozen):
    """A set of dataset images by ids, and the sha256 over them (harness.accuracy.calibration.ids_sha256)."""

    count: int
    sha256: str
    image_ids: list[int]
    seed: int | None = None  # the calibration split's ranking seed


class DatasetFacts(Frozen):
    annotations: str | None = None
    images_dir: str | None = None
    fingerprint: str | None = None  # which images, which annotations: equal fingerprints, equal data
    evaluation_split: ImageSplit | None = None  # the images this accuracy pass reported on
    calibration_split: ImageSplit | None = None  # held out for INT8 calibration, disjoint from the above


class ClassMapping(Frozen):
    """How the model's classes met the dataset's annotated classes."""

    annotated_classes: int  # dataset classes with annotations on the evaluated images
    predictable_classes: int  # of those, the ones the model has a class for (matched by name)
    unpredictable_classes: list[str]  # annotated classes the model cannot predict (names)
    model_classes_unused: int  # model classes without a dataset class (normal for a COCO model)
    # Which classes the headline AP averages over: all annotated classes (COCO's standard; an
    # unpredictable class counts as AP 0), or only the predictable ones (schema 1 files).
    ap_over: Literal["annotated", "predictable"]
    warning: str | None = None


class SplitFacts(Frozen):
    """One side of the dataset split: how many images, and which (sha256 of their sorted ids)."""

    images: int
    ids_sha256: str


class ScoreThreshold(Frozen):
    """The F1-optimal score threshold, chosen on the validation split; the mAP of the record
    is over the report split only (harness.accuracy.threshold)."""

    threshold: float | None  # None: no detection of the validation split matched a box
    iou_threshold: float  # a detection is a true positive at this IoU with a box of its class
    seed: int
    fraction: float  # share of the images in the validation split
    validation: SplitFacts
    report: SplitFacts
    # At the threshold: precision, recall and F1 on the validation split (where it was chosen)
    # and on the report split (held out: what a deployment at this threshold can expect).
    validation_precision: float | None = None
    validation_recall: float | None = None
    validation_f1: float | None = None
    report_precision: float | None = None
    report_recall: float | None = None
    report_f1: float | None = None
    detections_considered: int = 0  # detections of the validation split that were ranked
    reason: str | None = None  # why no threshold


class Accuracy(Frozen):
    """The accuracy pass of a cell (harness.accuracy.evaluate.run_accuracy_pass)."""

    images: int  # images evaluated
    evaluator: str  # "pycocotools 2.0.10"
    primary: Literal["bbox", "segm", "keypoints"]  # the iou type of the headline AP
    bbox: CocoMetrics
    segm: CocoMetrics | None = None
    keypoints: KeypointMetrics | None = None
    per_class: dict[str, float | None]  # per-class AP of the primary iou type, 0..1
    notes: list[str] = Field(default_factory=list)
    # Images per second inside predict(): preprocessing, the forward pass and output decoding
    # (JPEG decoding excluded). Not the model-only speed: that is latency.throughput_ips.
    predict_images_per_s: float | None
    wall_images_per_s: float | None  # the whole pass, waiting for JPEG decoding included
    predict_s: float  # seconds inside predict()
    wall_s: float  # seconds of the whole pass
    eval_s: float  # seconds pycocotools took
    batch: int
    padded_images: int  # repeats of the last image that filled the last batch (dropped)
    detections: int  # COCO results entries written
    results_file: str
    dataset: DatasetFacts
    mapping: ClassMapping | None = None  # None: not recorded (early schema 1 files)
    random_weights: bool
    note: str | None = None
    score_threshold: ScoreThreshold | None = None  # accuracy.threshold_split

    @property
    def primary_metrics(self) -> CocoMetrics | KeypointMetrics | None:
        return {"bbox": self.bbox, "segm": self.segm, "keypoints": self.keypoints}[self.primary]


# ----------------------------------------------------------------------------- monitor


class Spread(Frozen):
    min: Number | None = None
    p50: Number | None = None
    max: Number | None = None


class SampleCost(Frozen):
    p50: float  # microseconds per NVML sample
    max: float


class MonitorSummary(Frozen):
    """harness.environment.monitor.summarize over the judged (measure-phase) samples."""

    samples: int
    judged_samples: int
    judged_phases: str  # measure | all
    phases: dict[str, int]
    sm_mhz: Spread
    mem_mhz: Spread
    temp_c: Spread
    power_w: Spread
    start_sm_mhz: Number | None
    clock_drop_share: float | None  # 0..1
    slowdown_share: float | None
    throttled_share: float | None
    reasons: dict[str, float]  # clock-event reason -> share of judged samples
    throttled: bool | None
    throttled_why: str | None
    sample_cost_us: SampleCost | None = None
    interval_ms_actual_p50: float | None = None
    # NVML's memory readings over the judged samples (bytes): this process's device memory
    # (nvmlDeviceGetComputeRunningProcesses) and the whole device's used memory; and what the
    # two memory queries cost per sample (part of sample_cost_us).
    process_memory_bytes: Spread | None = None
    device_memory_used_bytes: Spread | None = None
    memory_cost_us: SampleCost | None = None


class TraceRow(Frozen):
    t_s: float  # seconds since the measurement started (negative: warm-up)
    t_mono_s: float | None = None  # the monotonic clock reading
    phase: str
    sm_mhz: Number | None = None
    mem_mhz: Number | None = None
    temp_c: Number | None = None
    power_w: Number | None = None
    util_gpu: Number | None = None
    util_mem: Number | None = None
    clock_event_reasons: int | None = None  # NVML's bitmask
    process_memory_bytes: int | None = None  # this process's device memory (NVML)
    device_memory_used_bytes: int | None = None  # the device's used memory (NVML)


class MonitorDevice(Frozen):
    cuda_index: int | None = None
    nvml_index: int | None = None
    mapping: str | None = None
    cuda_device_order: str | None = None
    name: str | None = None
    uuid: str | None = None


class CounterReadings(Frozen):
    """A cumulative energy counter read when the measurement phase began and when it ended
    (NVML's total energy in mJ, RAPL's in uJ), with the monotonic time of each reading."""

    start: float | None = None
    end: float | None = None
    unit: str  # mJ | uJ
    start_t_mono_s: float | None = None
    end_t_mono_s: float | None = None
    reason: str | None = None  # why the counter was not read


class Monitor(Frozen):
    """The GPU monitor's result (harness.environment.monitor.GpuMonitor.stop)."""

    available: bool
    reason: str | None
    interval_ms: float
    device_index: int | None
    device: MonitorDevice
    unsupported: dict[str, str]
    sample_errors: int
    t_s_origin: Literal["measure", "start"]
    trace: list[TraceRow]  # at most 2,000 rows; a longer trace is in files.monitor_trace
    summary: MonitorSummary
    trace_thinned_from: int | None = None  # rows of the full trace when the record's is thinned
    # NVML's total-energy counter at the measurement phase's start and end (phase callbacks,
    # outside the timed region); and why this process's device memory could not be sampled.
    energy_counter: CounterReadings | None = None
    memory_reason: str | None = None
    sampling: bool | None = None  # False: gpu.monitor off (boundary readings only)


# ----------------------------------------------------------------------------- prepare


class Artifact(Frozen):
    """The file the runtime ran: an exported ONNX file or a TensorRT engine."""

    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    input_name: str | None = None
    output_names: list[str] | None = None
    dynamic_batch: bool | None = None
    opset: int | None = None
    # The export's dynamic axes, as given to the exporter ({input or output: {axis: name}}).
    dynamic_axes: dict[str, dict[str, str]] | None = None
    export_s: float | None = None
    cached: bool | None = None


class GpuConditionsResult(Frozen):
    """What harness.environment.conditions.wait_for_gpu did before the cell ran."""

    cooldown_s: float | None = None
    waited_s: float | None = None
    start_temperature_c: Number | None = None
    start_util_gpu: Number | None = None
    timed_out: bool | None = None
    unchecked: list[str] = Field(default_factory=list)  # conditions that could not be read
    skipped_reason: str | None = None


PREPARE_TIMINGS = ("load_s", "export_s", "compile_s", "build_s", "parse_s", "cached_build_s", "fp16_convert_s",
                   "quantize_s", "sensitivity_s")


class NodeSet(Frozen):
    """Nodes of a model by name, with their count per op type."""

    count: int
    by_op: dict[str, int] = Field(default_factory=dict)
    names: list[str] = Field(default_factory=list)


class SensitiveNode(Frozen):
    """One quantized node's output, the INT8 model's against the FP32 model's."""

    node: str
    op_type: str
    output: str
    error: float  # relative L2 error of the output: ||int8 - fp32|| / ||fp32||, over the images
    own_error: float  # error minus the largest error among its compared inputs (what this node adds)
    sqnr_db: float | None = None  # 20 log10(1 / error); None when error is 0


class Sensitivity(Frozen):
    """The sensitivity pass (harness.runtimes.onnxruntime.quantize.sensitivity): which nodes'
    outputs move most from FP32, on a few calibration images."""

    image_ids: list[int]  # calibration images it ran on
    compared: int  # node outputs compared
    ranked_by: str  # own_error
    top: list[SensitiveNode]
    cached: bool = False
    seconds: float | None = None


class CalibrationFacts(Frozen):
    """The images a static INT8 model was calibrated on (harness.accuracy.calibration)."""

    source: str
    count: int
    image_ids: list[int]
    sha256: str  # over the image ids
    seed: int
    pool_size: int  # images in the split it was drawn from
    annotations_sha256: str
    overlaps_evaluation_set: bool
    method: str  # minmax | entropy | percentile
    cache_key: str | None = None  # the calibration ranges' cache entry
    cached: bool | None = None  # ranges reused from the cache


class Quantization(Frozen):
    """How the cell's model was quantized (ONNX Runtime: harness.runtimes.onnxruntime.quantize)."""

    mode: Literal["static", "dynamic"]
    tool: str  # "onnxruntime.quantization 1.32.0"
    format: str | None = None  # QDQ (static)
    per_channel: bool
    activation_type: str | None = None  # int8 | uint8 (static; dynamic quantizes activations to uint8 at run time)
    weight_type: str
    symmetric_activations: bool | None = None
    op_types: list[str] | None = None  # None: every op type the tool can quantize
    source_sha256: str  # the FP32 ONNX file quantized
    model_path: str
    model_sha256: str
    model_bytes: int
    cache_key: str
    cached: bool
    calibration: CalibrationFacts | None = None
    quantized: NodeSet  # nodes that run on quantized inputs
    kept_float: NodeSet  # nodes of quantizable op types left in float (excluded, or not quantized by the tool)
    float_by_op: dict[str, int] = Field(default_factory=dict)  # every node left in float, per op type
    keep_float: list[str] = Field(default_factory=list)  # excluded by name (settings keep_float)
    keep_float_worst: list[str] = Field(default_factory=list)  # excluded as the worst K of the sensitivity pass
    sensitivity: Sensitivity | None = None
    notes: list[str] = Field(default_factory=list)


class Prepare(Frozen):
    """Preparing the cell's runtime: seconds spent, the artifact, the model source's facts."""

    load_s: float | None = None  # loading the model or session
    export_s: float | None = None  # exporting to ONNX (0 when cached)
    compile_s: float | None = None  # torch.compile / JIT
    build_s: float | None = None  # building a TensorRT engine (None: a cached engine was reused)
    parse_s: float | None = None  # TensorRT's ONNX parser
    cached_build_s: float | None = None  # the reused engine's own build time
    fp16_convert_s: float | None = None  # ONNX fp16 conversion
    quantize_s: float | None = None  # INT8 quantization, calibration included (None: from the cache)
    sensitivity_s: float | None = None  # the INT8 sensitivity pass (None: from the cache or not run)
    artifact: Artifact | None = None
    model: FreeForm | None = None  # the model source's facts (weights file, hash, class...)
    gpu_conditions: GpuConditionsResult | None = None
    quantization: Quantization | None = None
    # Everything else the runtime said about its preparation (engine key, cache hits,
    # calibration, converter versions...), as it said it.
    runtime: FreeForm = Field(default_factory=dict)

    @classmethod
    def from_runtime(cls, facts: dict[str, Any]) -> Prepare:
        """The typed block from a runtime's `prepare()` dict: the known facts in their fields,
        the runtime's own ones under `runtime`."""
        known = {*PREPARE_TIMINGS, "artifact", "model", "gpu_conditions", "quantization"}
        typed: dict[str, Any] = {k: v for k, v in facts.items() if k in known}
        rest = {k: v for k, v in facts.items() if k not in known and k != "runtime"}
        runtime = {**(facts.get("runtime") or {}), **rest}
        if runtime:
            typed["runtime"] = runtime
        return cls.model_validate(typed)


# ----------------------------------------------------------------------------- placement


class Placement(Sparse):
    """Where the cell ran, when a backend spread the plan out (harness.run.placement)."""

    backend: str | None = None  # local | local-gpus | ray | merge...
    host: str | None = None
    gpu: int | None = None  # the GPU index the cell was pinned to (--gpus numbering)
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    gpu_slug: str | None = None  # set when cell ids are qualified per GPU: <cell_id>@<slug>
    cuda_visible_devices: str | None = None
    device_asked: str | None = None  # the plan's device, before pinning
    cpu_model: str | None = None
    hardware: str | None = None  # merge: the hardware name the result belongs to
    source_run: str | None = None  # merge: the run id it came from
    source_dir: str | None = None
    measured_cell_id: str | None = None  # merge: the cell id in its source run
    ray_address: str | None = None
    accelerator_type: str | None = None
    node_id: str | None = None
    ray_worker_pid: int | None = None
    gpu_ids: list[str] | None = None
    harness_version: str | None = None
    plan_dir_on_node: str | None = None
    ray_env_removed: dict[str, str] | None = None
    ray_resources: dict[str, float] | None = None


# ----------------------------------------------------------------------------- environment


class OsInfo(Frozen):
    system: str | None = None
    kernel: str | None = None
    version: str | None = None
    distribution: str | None = None
    machine: str | None = None
    libc: str | None = None


class CpuInfo(Frozen):
    model: str | None = None
    architecture: str | None = None
    logical_cores: int | None = None
    physical_cores: int | None = None
    available_cores: int | None = None
    cgroup_cpu_limit: float | None = None
    scaling_governor: str | None = None


class MemoryInfo(Frozen):
    total_bytes: int | None = None
    available_bytes: int | None = None
    cgroup_limit_bytes: int | None = None


class PythonInfo(Frozen):
    version: str | None = None
    implementation: str | None = None
    executable: str | None = None


class HarnessInfo(Frozen):
    version: str | None = None
    path: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    git_source: str | None = None


class CudaInfo(Frozen):
    source: str | None = None
    runtime: str | None = None
    cudnn: str | None = None
    cudnn_raw: int | None = None
    torch_cuda_available: bool | None = None


class NvidiaInfo(Frozen):
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_version: str | None = None
    gpu_count: int | None = None


class ContainerInfo(Frozen):
    in_container: bool | None = None
    image_name: str | None = None
    image_tag: str | None = None
    image_flavour: str | None = None
    base_image_digest: str | None = None
    lockfile_sha256: str | None = None


class PowerLimits(Frozen):
    current: float | None = None  # watts
    default: float | None = None
    enforced: float | None = None
    min: float | None = None
    max: float | None = None


class CurrentPending(Frozen):
    current: bool | None = None
    pending: bool | None = None


class SmMemClocks(Frozen):
    sm: int | None = None  # MHz
    mem: int | None = None


class AppClocks(Frozen):
    graphics: int | None = None  # MHz
    mem: int | None = None


class GpuInfo(Frozen):
    """One GPU the cell used, as harness.environment.capture.describe_gpu read it."""

    cuda_index: int | None = None
    nvml_index: int | None = None
    mapping: str | None = None
    cuda_device_order: str | None = None
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    memory_total_bytes: int | None = None
    compute_capability: str | None = None
    vbios_version: str | None = None
    power_limit_w: PowerLimits | None = None
    persistence_mode: bool | None = None
    ecc_mode: CurrentPending | None = None
    mig_mode: CurrentPending | None = None
    performance_state: str | None = None
    temperature_c: Number | None = None
    clocks_mhz: SmMemClocks | None = None
    max_clocks_mhz: SmMemClocks | None = None
    applications_clocks_mhz: AppClocks | None = None
    default_applications_clocks_mhz: AppClocks | None = None
    max_customer_boost_clock_mhz: int | None = None
    clock_event_reasons: int | None = None
    clock_event_reason_names: list[str] | None = None
    clocks_locked: bool | None = None
    clocks_locked_evidence: list[str] | None = None
    clocks_locked_how: str | None = None
    reasons: dict[str, str] = Field(default_factory=dict)


class Environment(Frozen):
    """harness.environment.capture.capture_environment's result; a null fact has its reason in
    `reasons`. `error` is set instead when the capture itself failed."""

    schema_version: int | None = None  # the capture's own format version
    captured_at: str | None = None
    hostname: str | None = None
    devices: list[str] = Field(default_factory=list)
    os: OsInfo = OsInfo()
    cpu: CpuInfo = CpuInfo()
    memory: MemoryInfo = MemoryInfo()
    python: PythonInfo = PythonInfo()
    harness: HarnessInfo = HarnessInfo()
    packages: dict[str, str | None] = Field(default_factory=dict)
    distributions: dict[str, str | None] = Field(default_factory=dict)
    cuda: CudaInfo = CudaInfo()
    nvidia: NvidiaInfo = NvidiaInfo()
    gpus: list[GpuInfo] = Field(default_factory=list)
    container: ContainerInfo = ContainerInfo()
    env_vars: dict[str, str | None] = Field(default_factory=dict)
    plan_sha256: str | None = None
    warnings: list[str] = Field(default_factory=list)
    reasons: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


# ----------------------------------------------------------------------------- the host


class HostPlacement(Frozen):
    """The cores the worker was pinned to (harness.environment.host.choose_placement)."""

    worker_cores: list[int]
    monitor_core: int | None = None
    numa_node: int | None = None
    source: str  # how the cores were chosen: "nvml gpu affinity", "sysfs numa node", "process affinity ..."
    threads: int  # intra-op threads set for torch and OMP from the core count
    pinned: bool  # False: pinning was asked for but refused (reason says why), or not asked for
    reason: str | None = None


class HostProbe(Frozen):
    """A fixed pure-Python loop, timed a few times (ms): how fast the host was at that moment."""

    min_ms: float
    median_ms: float


class GpuProcess(Frozen):
    pid: int
    name: str | None = None
    memory_bytes: int | None = None


class HostSnapshot(Frozen):
    """The host at one moment of a process (its start or end): speed and what else loads it."""

    at: float  # unix time
    probe: HostProbe
    load_avg: list[float]
    busy_cpus: int | None = None  # cores over 50% busy during 0.1 s
    cpus: int | None = None
    cpu_percent: float | None = None
    busy_cpus_error: str | None = None
    gpu_processes: list[GpuProcess] | str | None = None  # other processes on the GPU; str: why unknown


class ClockLock(Frozen):
    """`gpu.lock_clocks`: what was asked, and what NVML allowed."""

    requested: bool
    locked: bool
    sm_mhz: int | None = None
    reason: str | None = None  # why not locked, or how it was restored
    restored: bool | None = None


class Controls(Frozen):
    """What the harness held fixed in this process, and how (docs/performance.md says why)."""

    placement: HostPlacement | None = None
    threads: dict[str, int | None] = Field(default_factory=dict)  # torch, omp, ort intra-op... as set
    gc_disabled_in_timed_loop: bool = False
    clocks: ClockLock | None = None


class ProcessFacts(Frozen):
    """The worker process a record comes from: its cost beyond the timed work, and the host."""

    pid: int
    # Seconds from the process's start until its warm-up began: interpreter, imports, model
    # build, export or engine (cached after the first process), session creation.
    overhead_s: float | None = None
    start: HostSnapshot | None = None
    end: HostSnapshot | None = None


# ----------------------------------------------------------------------------- resources


class DeviceMemory(Frozen):
    """Peak device memory of the timed phase (harness.run.resources). `peak_bytes` is the
    headline, read as `method` says (NVML's process figure for every runtime where it exists);
    null with `reason` where it cannot be had, never 0. Two figures are one quantity only when
    their methods agree."""

    peak_bytes: int | None = None
    method: str | None = None  # nvml_process | torch_allocator (no NVML process reading) | nvml_device_used
    reason: str | None = None
    # torch's caching allocator, reset at the measurement phase's start, read at its end:
    # detail beside the headline (tensors only: no CUDA context, no cache)
    torch_allocated_peak_bytes: int | None = None
    torch_reserved_peak_bytes: int | None = None
    # NVML: this process's device memory (what nvidia-smi lists, CUDA context included),
    # before the model or session was created and at its peak over the measurement phase
    process_baseline_bytes: int | None = None
    process_peak_bytes: int | None = None
    process_samples: int | None = None
    process_reason: str | None = None
    # NVML: the whole device's used memory (every process on it), before and at the peak
    device_used_baseline_bytes: int | None = None
    device_used_peak_bytes: int | None = None


class HostMemory(Frozen):
    """The worker's resident memory. `peak_rss_bytes` is the high-water mark (/proc/self/status
    VmHWM) of the timed phase: reset when the measurement phase began, read after it
    (`peak_rss_scope` measure_phase; `process` where it could not be reset, `reset_reason` says
    why); `process_peak_rss_bytes` the whole process's since exec (prepare included);
    `end_peak_rss_bytes` VmHWM when the record was built (since the reset: the accuracy pass
    included); `ru_maxrss_bytes` is getrusage's figure (which on Linux also counts the parent's
    pages a child held before its exec)."""

    peak_rss_bytes: int | None = None
    peak_rss_scope: str | None = None  # measure_phase | process
    process_peak_rss_bytes: int | None = None
    reset_reason: str | None = None
    released_before_reset_bytes: int | None = None  # freed heap handed back to the OS first
    end_peak_rss_bytes: int | None = None
    rss_after_measure_bytes: int | None = None
    ru_maxrss_bytes: int | None = None
    method: str | None = None
    reason: str | None = None


class ArtifactSize(Frozen):
    """The file that ran, on disk: an ONNX file (with its external data files), a TensorRT
    engine, a checkpoint. Null with `reason` when none exists (random weights built in memory)."""

    kind: str | None = None  # onnx | engine | checkpoint
    path: str | None = None
    bytes: int | None = None
    files: list[str] = Field(default_factory=list)  # every file counted, when more than one
    reason: str | None = None


class EnergyFigures(Frozen):
    """Energy over the measurement phase (harness.environment.energy): what the counter (or
    the integrated power samples) says the device used from the phase's first call to its
    last, pauses included. Null with `reason` where it cannot be had, never 0."""

    method: str | None = None  # nvml_energy_counter | nvml_power_integration | rapl
    scope: str | None = None  # what the figure covers: "GPU cuda:0 (whole device)", "CPU packages"
    joules: float | None = None
    duration_s: float | None = None
    images: int | None = None  # images in the measurement phase (calls x batch)
    joules_per_image: float | None = None
    images_per_joule: float | None = None
    mean_power_w: float | None = None  # joules / duration_s
    peak_power_w: float | None = None  # highest power sample in the phase
    power_samples: int | None = None
    counter_joules: float | None = None  # the counter's figure (when read)
    integrated_joules: float | None = None  # the power samples' integral (a cross-check)
    domains: list[str] = Field(default_factory=list)  # RAPL zones read
    reason: str | None = None  # why null, or why the fallback was used


class Resources(Frozen):
    """Memory, energy and artifact size of one process's cell (harness.run.resources)."""

    device_memory: DeviceMemory
    host_memory: HostMemory
    artifact: ArtifactSize
    energy: EnergyFigures


# ----------------------------------------------------------------------------- the record


class NmsFacts(Frozen):
    """The cell's NMS: where it ran, what ran it, and how many candidates it had to sort out
    (the end-to-end scope's last timed batch; the same images every iteration)."""

    placement: str  # in_graph | host | device
    implementation: str  # in words: which function or graph op
    iou_threshold: float | None = None
    score_threshold: float | None = None  # candidates score strictly above it
    class_agnostic: bool | None = None
    top_k: int | None = None  # detections kept per image after NMS
    # Candidates entering NMS and detections leaving it, per image of the batch; None where
    # the NMS ran inside the model and the harness cannot see them (in_graph).
    candidates: list[int] | None = None
    kept: list[int] | None = None
    note: str | None = None


class CellFiles(Sparse):
    """The cell's files, as paths relative to the run folder."""

    log: str | None = None
    detections: str | None = None  # COCO results of the accuracy pass
    outputs: str | None = None  # raw outputs on the agreement images (.npz)
    # Every detection of the agreement images, all classes, model class indices (.json)
    agreement_detections: str | None = None
    monitor_trace: str | None = None  # the full NVML trace when longer than the record's
    gallery: list[str] | None = None


class CellRecord(Frozen):
    """One process's result for a cell: immutable, written once (cells/<cell_id>.json, or
    cells/<cell_id>.r<k>.json for the k-th of several processes)."""

    schema_version: int = SCHEMA_VERSION
    cell_id: str
    # Which of the cell's processes this is (0-based); None: the cell's only process.
    repeat: int | None = None
    identity: CellIdentity
    # The plan's Cell as run, verbatim (harness.plan.cells.Cell): a snapshot for running the
    # cell again. Readers use `identity`.
    cell: FreeForm
    status: Status
    reason: str | None = None  # why skipped / failed / flagged, in words
    # A failed cell's fault: "cell" (its own code or input) or "environmental" (out of time,
    # killed from outside, a full disk, lost on a cluster: `bench run --resume` measures it
    # again). None for other statuses, and for failures recorded before schema 2.
    failure_kind: Literal["cell", "environmental"] | None = None
    flags: list[str] = Field(default_factory=list)  # unstable, throttled, launch_bound, random_weights
    started_at: str  # ISO 8601 UTC
    finished_at: str
    random_weights: bool = False  # the model source drew its weights at random
    latency: Latency | None = None
    nms: NmsFacts | None = None  # a model whose NMS the harness places
    prepare: Prepare = Prepare()
    settings: FreeForm = Field(default_factory=dict)  # read back from the runtime library
    accuracy: Accuracy | None = None
    monitor: Monitor | None = None
    environment: Environment = Environment()
    fingerprint: str | None = None  # harness.environment.fingerprint of environment + settings
    log_tail: str | None = None
    files: CellFiles = CellFiles()
    placement: Placement | None = None
    controls: Controls | None = None
    process: ProcessFacts | None = None
    serve: ServeResult | None = None  # a server cell's levels and monitoring figures
    resources: Resources | None = None  # memory, energy and artifact size (measured cells)


# ----------------------------------------------------------------------------- derived


class AcrossProcesses(Frozen):
    """A cell's latency over its processes (harness.measure.repeats.across_processes)."""

    processes: int
    process_medians: list[float]  # ms per batch, in repeat order
    headline: float  # median of the process medians
    rerun_ci95: tuple[float, float]  # where a re-run's headline is expected, 95%
    ci95: tuple[float, float]  # hierarchical-bootstrap interval of the headline
    between_cov: float | None = None
    between_spread: float  # (max - min) / headline
    within_cov_median: float
    degrees_of_freedom: float | None = None
    unstable_reasons: list[str] = Field(default_factory=list)
    p90: float | None = None  # of every sample of every process
    p99: float | None = None
    throughput_ips: float | None = None  # batch * 1000 / headline
    repeats_planned: int | None = None  # processes the plan asked for (fewer measured: some failed)


class MapDelta(Frozen):
    """AP points, cell minus reference (pycocotools' 0..1 value x 100)."""

    AP: float | None = None
    AP50: float | None = None
    AP75: float | None = None
    AP_small: float | None = None  # small objects degrade first under quantization
    AP_medium: float | None = None
    AP_large: float | None = None


class WorstImage(Frozen):
    image_id: int
    disagreement: float


class DetectionAgreement(Sparse):
    """harness.accuracy.agreement.detection_agreement, or `reason` when it could not be computed."""

    reason: str | None = None
    images: int | None = None
    iou_threshold: float | None = None
    min_score: float | None = None
    reference_detections: int | None = None
    other_detections: int | None = None
    matched: int | None = None
    unmatched_reference: int | None = None
    unmatched_other: int | None = None
    match_rate: float | None = None  # 0..1: share of all boxes (either side) that found a partner
    mean_iou: float | None = None
    min_iou: float | None = None
    mean_abs_score_diff: float | None = None
    max_abs_score_diff: float | None = None
    worst_images: list[WorstImage] | None = None


class OutputAgreement(Sparse):
    passed: bool
    shape: list[int] | None = None
    shape_mismatch: list[list[int]] | None = None
    dtype: list[str] | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mean_abs_diff: float | None = None
    mismatches: int | None = None
    nan_mismatches: int | None = None
    both_nan: int | None = None
    elements: int | None = None


class RawAgreement(Sparse):
    """harness.accuracy.agreement.raw_output_agreement, or `reason`."""

    reason: str | None = None
    atol: float | None = None
    rtol: float | None = None
    query_alignment: str | None = None
    queries_reordered: int | None = None
    outputs: dict[str, OutputAgreement] | None = None
    only_in_reference: list[str] | None = None
    only_in_other: list[str] | None = None
    passed: bool | None = None


class Gate(Sparse):
    max_map_drop: float | None = None  # AP points the plan allows (None: only the class gate is set)
    drop: float | None  # AP points lost against the reference
    regressed: bool  # the overall drop or the worst class's passed its limit
    reason: str | None = None  # why not gated
    max_class_drop: float | None = None  # AP points the plan allows the worst class to lose
    worst_class: str | None = None  # the class that lost the most AP
    worst_class_drop: float | None = None  # AP points it lost
    class_regressed: bool | None = None  # the worst class passed max_class_drop


class CellResources(Sparse):
    """A cell's memory and energy over its processes (harness.measure.resources): the worst
    peak of any process, the median of the per-process energy figures; `reasons` says why a
    figure is null."""

    processes: int
    device_memory_peak_bytes: int | None = None
    device_memory_method: str | None = None
    process_memory_peak_bytes: int | None = None  # NVML's, CUDA context included
    host_peak_rss_bytes: int | None = None
    host_memory_method: str | None = None  # what the processes' host peaks were read with, ' | '-joined
    artifact_bytes: int | None = None
    artifact_kind: str | None = None
    joules_per_image: float | None = None
    images_per_joule: float | None = None
    mean_power_w: float | None = None
    peak_power_w: float | None = None
    energy_method: str | None = None
    energy_scope: str | None = None
    reasons: dict[str, str] | None = None


class BudgetVerdict(Frozen):
    """One budget judged on one cell (harness.report.budgets)."""

    budget: str  # "latency_ms.p99", "device_memory_mb", ...
    limit: float
    unit: str
    value: float | None = None  # the cell's figure in `unit`
    # inconclusive: the figure's re-run interval straddles the limit (harness.report.budgets)
    verdict: Literal["pass", "fail", "inconclusive", "not_measured"]
    detail: str | None = None  # how the figure was taken and judged, or why it was not measured
    interval: tuple[float, float] | None = None  # the re-run interval judged, in `unit` (None: the figure was)


class DerivedEntry(Sparse):
    """What finalize derives for one cell from the run folder (harness.accuracy.derive)."""

    status: Status | None = None  # the effective status: a tripped accuracy gate included
    role: Literal["reference"] | None = None
    reference: str | None = None  # the reference cell's id
    random_weights: bool | None = None
    note: str | None = None
    resolution_note: str | None = None
    reason: str | None = None  # why nothing was compared
    primary: str | None = None
    deltas: dict[str, MapDelta] | None = None  # per iou type
    map_delta: MapDelta | None = None  # of the primary iou type
    per_class_delta: dict[str, float | None] | None = None
    detection_agreement: DetectionAgreement | None = None
    raw_agreement: RawAgreement | None = None
    gate: Gate | None = None
    gallery: list[str] | None = None
    gallery_error: str | None = None
    across_processes: AcrossProcesses | None = None
    resources: CellResources | None = None
    budgets: list[BudgetVerdict] | None = None


def record_key(cell_id: str, repeat: int | None) -> str:
    """A record's file name without `.json`: the cell id, and `.r<k>` for the k-th of several
    processes of the cell."""
    return cell_id if repeat is None else f"{cell_id}.r{repeat}"


def group_by_cell(records: Sequence[CellRecord]) -> dict[str, list[CellRecord]]:
    """The records of each cell (one per process), in the order the cells first appear, each
    cell's processes in repeat order."""
    groups: dict[str, list[CellRecord]] = {}
    for record in records:
        groups.setdefault(record.cell_id, []).append(record)
    for group in groups.values():
        group.sort(key=lambda r: -1 if r.repeat is None else r.repeat)
    return groups


def primary_record(group: Sequence[CellRecord]) -> CellRecord:
    """The process that speaks for the cell where one must (its identity, accuracy pass,
    settings): the first process that was measured, else the first."""
    measured = [r for r in group if r.status in MEASURED_STATUSES and r.latency is not None]
    return (measured or list(group))[0]


def effective_status(record: CellRecord, entry: DerivedEntry | None) -> Status:
    """The cell's status with what was derived after it ran: the worst of its flags, its own
    status and a tripped accuracy gate."""
    marks = [*record.flags, record.status]
    if entry is not None and entry.gate is not None and entry.gate.regressed:
        marks.append("accuracy_regression")
    return worst_status(marks)


# ----------------------------------------------------------------------------- run level


class MergedSource(Frozen):
    run_dir: str
    run_id: str | None = None
    plan_name: str | None = None
    plan_sha256: str | None = None
    started_at: str | None = None
    harness_version: str | None = None
    cells: int
    hardware: list[str]
    kept_as: str


class RunMeta(Sparse):
    """run.json: written once when the run folder is created (and the `run` of results.json,
    with `finished_at` and `harness_version_finalized` added by finalize)."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    plan_name: str
    started_at: str
    harness_version: str
    description: str | None = None
    plan_sha256: str | None = None
    plan_file: str | None = None
    plan_dir: str | None = None
    cell_ids: list[str] = Field(default_factory=list)  # planned, in order
    backend: str | None = None  # merge
    plans_differ: bool | None = None  # merge: the inputs' plans differ
    hardware: dict[str, str] | None = None  # merge: slug -> hardware name
    merged_from: list[MergedSource] | None = None
    finished_at: str | None = None
    harness_version_finalized: str | None = None


class ResultsFile(Frozen):
    """results.json: the run, every cell record, and what finalize derived."""

    schema_version: int = SCHEMA_VERSION
    run: RunMeta
    cells: list[CellRecord]
    derived: dict[str, DerivedEntry] = Field(default_factory=dict)
    derived_error: str | None = None  # deriving failed; the measured data is kept regardless
