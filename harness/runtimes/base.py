"""The runtime protocol: what every runtime module implements.

A runtime is built from a cell (model, precision, batch, resolution, device, settings) and the
cell's model source. Its life in a worker process:

    reason = RuntimeClass.unavailable_reason(cell)   # cheap, before anything loads
    rt = RuntimeClass(cell, source, log)              # rt.options: the typed settings
    prep = rt.prepare()                               # export / build / compile, timed apart
    x = rt.model_input()                              # a prepared device-side batch
    rt.run_model(x)                                   # model scope: output left on the device
    rt.stages()                                       # end-to-end scope, stage by stage
    rt.predict(images)                                # accuracy pass: same object, same artifact
    rt.settings()                                     # what it actually ran with, read back
    rt.close()

Timers need to know where the work runs: `timer_stream()` returns the CUDA stream whose events
bracket the work (a `torch.cuda.Stream`), or None when the call is synchronous on the host.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

import numpy as np

from harness.errors import UserError
from harness.runtimes.plugin import RuntimePlugin, RuntimeSettings, SettingsProblem

if TYPE_CHECKING:
    from harness.models.base import ModelSource
    from harness.models.detections import Detections
    from harness.plan.cells import Cell


@dataclass(frozen=True)
class Stage:
    """One step of the end-to-end path. Each takes the previous step's output."""

    name: str
    fn: Callable[[Any], Any]
    # True when the step may leave work queued on the device, so a per-stage timer must
    # synchronise after it to charge the time to the right stage.
    asynchronous: bool = False


class Runtime(ABC):
    # The plug-in this class implements (harness/runtimes/<package>/__init__.py); `name` is
    # taken from it.
    plugin: ClassVar[RuntimePlugin]
    name: ClassVar[str]
    # False when run_model() returns only after the device finished (ONNX Runtime's Run):
    # host time then always covers device time, so it cannot say "launch-bound".
    asynchronous_call: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "plugin" in cls.__dict__:
            cls.name = cls.plugin.name

    def __init__(self, cell: Cell, source: ModelSource, log: TextIO):
        self.cell = cell
        self.source = source
        self.log = log
        # Checked at `bench validate` already; checked again here for cells built by hand.
        try:
            self.options: RuntimeSettings = self.plugin.parse_settings(cell.runtime.settings)
        except SettingsProblem as exc:
            raise UserError(exc.describe(f"runtime `{cell.runtime.key}` settings")) from None

    # -- before anything loads -------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, cell: Cell) -> str | None:
        """Why this runtime cannot run `cell` here (missing package, no GPU, provider absent),
        or None. Must be cheap and must not fall back to something else."""
        return None

    # -- preparation (never inside latency) ------------------------------------------------
    @abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Export / build / compile / load. Returns timings in seconds and artifact facts, e.g.
        {"export_s": 4.1, "load_s": 0.3, "artifact": {"path": ..., "bytes": ..., "sha256": ...}}."""

    # -- model scope -----------------------------------------------------------------------
    @abstractmethod
    def to_device(self, batch: np.ndarray) -> Any:
        """A host float32 NCHW batch onto the runtime's device, in its input dtype."""

    @abstractmethod
    def run_model(self, inputs: Any) -> Any:
        """One forward pass on a device-side batch; outputs stay on the device."""

    @abstractmethod
    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        """Device outputs to host numpy arrays named as the decoder expects
        (rfdetr: `dets`, `labels`, and `masks` / `keypoints` for those families)."""

    def model_input(self) -> Any:
        """A seeded random batch, prepared on the device (model scope measures only the call)."""
        rng = np.random.default_rng(0)
        res = self.cell.resolution
        batch = rng.standard_normal((self.cell.batch, 3, res, res), dtype=np.float32)
        return self.to_device(batch)

    # -- timing hooks ----------------------------------------------------------------------
    def timer_stream(self) -> Any | None:
        """The torch.cuda.Stream the work runs on (CUDA events go there), or None (host clock)."""
        return None

    def synchronize(self) -> None:  # noqa: B027 (a no-op is right for synchronous runtimes)
        """Wait until all work this runtime queued has finished."""

    # -- memory hooks (called between the timed loops, never inside one) -------------------
    def reset_device_memory_peak(self) -> None:  # noqa: B027 (runtimes without an allocator of their own)
        """Start counting the runtime's own allocator peak afresh (the measurement phase begins)."""

    def device_memory_peak(self) -> dict[str, int] | None:
        """The runtime's own allocator peak since the reset, {"allocated_bytes", "reserved_bytes"},
        or None when it has none to report: NVML's reading of the process is then the figure."""
        return None

    # -- end-to-end scope ------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        """Decoded images (list of HxWx3 uint8 RGB) in, detections out. A model whose NMS the
        plan puts on the host or the device gets its decoding split into `candidates` and `nms`
        stages, where that placement runs them (harness.models.nms)."""
        metas: dict[str, Any] = {}

        def preprocess(images: Sequence[np.ndarray]) -> np.ndarray:
            batch, metas["meta"] = self.source.preprocess(images, self.cell.resolution)
            return batch

        def postprocess(outputs: dict[str, np.ndarray]) -> list[Detections]:
            return self.source.decode(outputs, metas["meta"])

        front = [
            Stage("preprocess", preprocess),
            Stage("h2d", self.to_device, asynchronous=True),
            Stage("infer", self.run_model, asynchronous=True),
        ]
        nms = self._nms_stages()
        if nms is None:
            return [*front, Stage("d2h", self.to_host), Stage("postprocess", postprocess)]
        from harness.models import nms as nms_mod

        top_k = nms.config.top_k

        def finish(kept: list[Any]) -> list[Detections]:
            return nms_mod.finish(kept, metas["meta"], top_k)

        if nms.placement == "host":
            middle = [Stage("d2h", self.to_host)]
            middle += [Stage(name, fn, asynchronous=wait) for name, fn, wait in nms_mod.host_pipeline(nms)]
        else:
            middle = [Stage(name, fn, asynchronous=wait)
                      for name, fn, wait in nms_mod.device_pipeline(nms, self.device_tensors)]
            middle.append(Stage("d2h", nms_mod.to_host))
        return [*front, *middle, Stage("postprocess", finish)]

    def _nms_stages(self) -> Any:
        """The cell's NmsStages (one per runtime: its counts are the record's), or None when
        the harness runs no NMS stage for it. Only a plan that names the `nms` axis gets the
        split stages; otherwise a raw head is decoded in one `postprocess` stage, as before
        (the same host NMS inside it)."""
        if self.cell.nms not in ("host", "device") or not self.cell.nms_axis:
            return None
        if "_nms" not in self.__dict__:
            from harness.models.nms import NmsStages

            config = self.source.nms_config()
            self.__dict__["_nms"] = None if config is None else NmsStages(config, self.cell.nms, device=self.device_name())
        return self.__dict__["_nms"]

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        """`run_model`'s outputs as torch tensors on the runtime's device, named as the decoder
        expects, without a copy (the `device` NMS placement; plug-ins with `device_nms`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hand its outputs to torch on its device")

    def device_name(self) -> str:
        """The device the runtime's outputs are on, in torch's words (cpu, cuda:N)."""
        return "cpu"

    def nms_facts(self) -> dict[str, Any] | None:
        """The record's `nms`: where the cell's NMS ran, what ran it, the candidate counts of
        the last end-to-end batch (None before any, and for NMS inside the model)."""
        if self.cell.nms is None or not self.cell.nms_axis:
            return None
        nms = self._nms_stages()
        if nms is not None:
            facts_here: dict[str, Any] = nms.facts()
            return facts_here
        facts = self.source.in_graph_nms(self.plugin.name)
        return None if facts is None else {"placement": self.cell.nms, **facts}

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """The end-to-end path without timing: what the accuracy pass calls."""
        value: Any = images
        for stage in self.stages():
            value = stage.fn(value)
        return value

    def raw_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw model outputs for a host batch (for agreement checks against PyTorch FP32)."""
        return self.to_host(self.run_model(self.to_device(batch)))

    # -- what it ran with ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Settings read back from the library (providers, flags, versions), not the plan's."""
        return {}

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Free what prepare() built."""
