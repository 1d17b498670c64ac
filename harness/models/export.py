"""RF-DETR -> ONNX through rfdetr's own exporter, cached by what determines the graph.

A plan with ten ONNX cells of one model exports once: the file lives in
`<artifacts>/onnx/<key>/model.onnx`, key = first 16 hex of sha256 over the canonical JSON of
the key fields (model variant, weights identity, resolution, batch mode, opset, rfdetr
version...). The export is written into a temporary sibling folder and renamed into place, so
two workers exporting the same key at once both end with a whole file (the loser's rename
fails and it uses the winner's). `meta.json` beside the file records the key fields, export time,
size and sha256.

rfdetr's exporter prints the whole graph (torch.onnx verbose output, from C++ as well as
Python), so stdout and stderr are redirected at the file-descriptor level into the cell log
while it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from harness import files
from harness.environment.fingerprint import short_hash
from harness.files import file_sha256
from harness.models.base import OnnxArtifact

ONNX_FILE = "model.onnx"
META_FILE = "meta.json"


def cache_key(key_fields: dict[str, Any]) -> str:
    return short_hash(key_fields)


@contextlib.contextmanager
def redirect_fds(log: TextIO) -> Iterator[None]:
    """Send fds 1 and 2 (and Python's sys.stdout/stderr) into `log` for the duration.

    Works for output from C/C++ extensions too, which Python-level redirection misses. When
    `log` has no real file descriptor (a StringIO in tests), output goes through a temporary
    file that is copied into `log` afterwards.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    log.flush()
    with contextlib.ExitStack() as stack:
        sink: TextIO = log
        spool: TextIO | None = None
        try:
            target_fd = log.fileno()
        except (AttributeError, OSError, ValueError):
            spool = stack.enter_context(tempfile.TemporaryFile(mode="w+"))
            sink, target_fd = spool, spool.fileno()
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(target_fd, 1)
            os.dup2(target_fd, 2)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if spool is not None:
                spool.flush()
                spool.seek(0)
                log.write(spool.read())
            log.flush()


def read_onnx_io(path: Path) -> tuple[str, list[str], int | None, bool]:
    """(input name, output names, default-domain opset, dynamic batch?) read from the file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise ValueError(f"{path} has no graph input")
    opset = next(
        (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None
    )
    dims = inputs[0].type.tensor_type.shape.dim
    dynamic = bool(dims) and not dims[0].HasField("dim_value")
    return inputs[0].name, [o.name for o in model.graph.output], opset, dynamic


def artifact_from_file(
    path: Path, *, export_s: float | None, cached: bool, sha256: str | None = None,
    dynamic_axes: dict[str, dict[str, str]] | None = None,
) -> OnnxArtifact:
    input_name, output_names, opset, dynamic = read_onnx_io(path)
    return OnnxArtifact(
        dynamic_axes=dynamic_axes,
        path=path,
        input_name=input_name,
        output_names=output_names,
        dynamic_batch=dynamic,
        opset=opset,
        export_s=export_s,
        cached=cached,
        bytes=path.stat().st_size,
        sha256=sha256 or file_sha256(path),
    )


def _cached(folder: Path) -> OnnxArtifact | None:
    onnx_path, meta_path = folder / ONNX_FILE, folder / META_FILE
    if not (onnx_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("bytes") != onnx_path.stat().st_size:
        return None  # a truncated or replaced file: export again
    return artifact_from_file(onnx_path, export_s=None, cached=True, sha256=meta.get("sha256"),
                              dynamic_axes=meta.get("dynamic_axes"))


def export_rfdetr_onnx(
    build_model: Callable[[], Any],
    *,
    cache_dir: Path,
    key_fields: dict[str, Any],
    resolution: int,
    batch: int,
    dynamic_batch: bool,
    opset: int = 17,
    log: TextIO,
) -> OnnxArtifact:
    """The ONNX file for an RF-DETR model, from the cache or exported now.

    `build_model()` returns an `rfdetr.RFDETR` (called only on a cache miss). `key_fields`
    identify the model and weights; resolution, batch mode, opset and the rfdetr version are
    added here so callers cannot forget them.
    """
    import rfdetr

    fields = {
        **key_fields,
        "resolution": resolution,
        "batch": "dynamic" if dynamic_batch else batch,
        "opset": opset,
        "rfdetr": getattr(rfdetr, "__version__", None) or _dist_version("rfdetr"),
        "exporter": "rfdetr.RFDETR.export(format=onnx)",
    }

    def write(staging: Path) -> dict[str, Any]:
        model = build_model()
        started = time.perf_counter()
        with redirect_fds(log):
            written = model.export(
                output_dir=str(staging / "rfdetr-out"),
                format="onnx",
                opset_version=opset,
                verbose=False,
                shape=(resolution, resolution),
                batch_size=batch,
                dynamic_batch=dynamic_batch,
                output_name="model",
            )
        written_path = Path(written) if written else next((staging / "rfdetr-out").glob("*.onnx"))
        os.replace(written_path, staging / ONNX_FILE)
        # A model over 2 GB would carry external data files; RF-DETR sizes stay well below.
        shutil.rmtree(staging / "rfdetr-out", ignore_errors=True)
        return {"export_s": time.perf_counter() - started}

    return cached_onnx_export(write, cache_dir=cache_dir, key_fields=fields, log=log)


def cached_onnx_export(
    write: Callable[[Path], dict[str, Any] | None],
    *,
    cache_dir: Path,
    key_fields: dict[str, Any],
    log: TextIO,
) -> OnnxArtifact:
    """The ONNX file keyed by `key_fields` (everything that decides the graph: model, weights,
    resolution, batch mode, opset, exporter and its version), from the cache or written now.

    `write(staging)` exports into `staging / model.onnx` (called only on a cache miss) and may
    return facts for meta.json and the artifact (`dynamic_axes`, and `export_s` when the
    export alone is to be timed, without building the model first).
    """
    key = cache_key(key_fields)
    folder = Path(cache_dir) / "onnx" / key
    hit = _cached(folder)
    if hit is not None:
        print(f"[export] ONNX cache hit {folder}", file=log, flush=True)
        return hit

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        print(f"[export] exporting ONNX to {folder} ({json.dumps(key_fields, sort_keys=True, default=str)})",
              file=log, flush=True)
        start = time.perf_counter()
        extra = write(staging) or {}
        export_s = float(extra.get("export_s") or (time.perf_counter() - start))
        onnx_path = staging / ONNX_FILE
        dynamic_axes = extra.get("dynamic_axes")
        artifact = artifact_from_file(onnx_path, export_s=export_s, cached=False, dynamic_axes=dynamic_axes)
        meta = {
            "key": key,
            "key_fields": key_fields,
            "export_s": export_s,
            "bytes": artifact.bytes,
            "sha256": artifact.sha256,
            "input_name": artifact.input_name,
            "output_names": artifact.output_names,
            "opset": artifact.opset,
            "dynamic_batch": artifact.dynamic_batch,
            "dynamic_axes": dynamic_axes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files.write_new(staging / META_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str))
        try:
            os.rename(staging, folder)
        except OSError:
            # Another worker finished the same key first (or a stale folder is in the way).
            hit = _cached(folder)
            if hit is None:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(staging, folder)
            else:
                shutil.rmtree(staging, ignore_errors=True)
                return OnnxArtifact(**{**hit.__dict__, "export_s": export_s, "cached": False})
        print(f"[export] done in {export_s:.1f} s, {artifact.bytes / 1e6:.1f} MB", file=log,
              flush=True)
        return OnnxArtifact(**{**artifact.__dict__, "path": folder / ONNX_FILE})
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
