"""The results layer: one typed model that writes and reads every result of the harness.

A leaf: nothing here imports any other part of the harness, so the measuring instrument
(harness.measure), the runner (harness.run) and the readers (harness.report, compare, merge)
all build on it without depending on each other. Schema and history: docs/results-schema.md.
"""

from harness.results.files import (
    CellFileError,
    NewerSchemaError,
    ResultsError,
    RunRead,
    cell_files,
    describe_validation,
    load_cell_record,
    load_results,
    load_run_meta,
    read_cell_file,
    read_cell_files,
    read_json,
    read_results_file,
    read_run,
    read_run_meta,
)
from harness.results.migrate import MigrationError
from harness.results.model import (
    MEASURED_STATUSES,
    SCHEMA_VERSION,
    STATUS_ORDER,
    Accuracy,
    Artifact,
    CellFiles,
    CellIdentity,
    CellRecord,
    ClassMapping,
    CocoMetrics,
    DatasetFacts,
    DatasetRef,
    DatasetSubset,
    DerivedEntry,
    DetectionAgreement,
    Environment,
    Gate,
    GpuInfo,
    KeypointMetrics,
    Latency,
    MapDelta,
    Monitor,
    MonitorSummary,
    NmsFacts,
    Placement,
    Prepare,
    Protocol,
    RawAgreement,
    ResultsFile,
    RunMeta,
    Scope,
    StageTiming,
    Stats,
    Status,
    SustainedProtocol,
    TraceRow,
    WeightsKind,
    Window,
    effective_status,
    worst_status,
)

__all__ = [
    "MEASURED_STATUSES", "SCHEMA_VERSION", "STATUS_ORDER", "Accuracy", "Artifact", "CellFileError",
    "CellFiles", "CellIdentity", "CellRecord", "ClassMapping", "CocoMetrics", "DatasetFacts",
    "DatasetRef", "DatasetSubset", "DerivedEntry", "DetectionAgreement", "Environment", "Gate",
    "GpuInfo", "KeypointMetrics", "Latency", "MapDelta", "MigrationError", "Monitor",
    "MonitorSummary", "NewerSchemaError", "NmsFacts", "Placement", "Prepare", "Protocol", "RawAgreement",
    "ResultsError", "ResultsFile", "RunMeta", "RunRead", "Scope", "StageTiming", "Stats", "Status",
    "SustainedProtocol", "TraceRow", "WeightsKind", "Window", "cell_files", "describe_validation",
    "effective_status", "load_cell_record", "load_results", "load_run_meta", "read_cell_file",
    "read_cell_files", "read_json", "read_results_file", "read_run", "read_run_meta", "worst_status",
]
