"""The server scenario: a detection endpoint under load (docs/serve.md).

    app.py       the HTTP endpoint (Starlette on uvicorn): /v1/detect, /healthz, /metrics, /v1/stats
    batcher.py   the inference thread and Triton's dynamic-batching rule, over Runtime.stages()
    images.py    request bodies to pixels, with size and format limits
    metrics.py   the per-request log and the Prometheus exposition
    server.py    the server process (`bench serve`, or started by a server cell)
    loadgen.py   the load generator: closed loop (concurrency) and open loop (Poisson arrivals)
    scenario.py  a server cell: start the server, drive it level by level, record the figures
    stats.py     percentiles with intervals, histograms, the distribution-shift check

Starlette, uvicorn and python-multipart are the optional `serve` extra; nothing outside this
package imports them, and this package imports them only inside functions.
"""

from __future__ import annotations

MAX_PORT = 65535


def listen_port(text: str) -> int:
    """`bench serve --port`'s type: a TCP port, 0 (any free port) to 65535. argparse prints the
    ArgumentTypeError as `argument --port: ...` and exits 2, so a bad port never reaches bind()
    (whose OverflowError would be a traceback)."""
    from argparse import ArgumentTypeError

    try:
        port = int(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a port number (0-{MAX_PORT})") from None
    if not 0 <= port <= MAX_PORT:
        raise ArgumentTypeError(f"{port} is outside 0-{MAX_PORT} (0: any free port)")
    return port


def serve_extra_problem() -> str | None:
    """Why the server cannot run here (the `serve` extra is not installed), or None."""
    try:
        import python_multipart  # noqa: F401  (multipart/form-data)
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"the server needs the `serve` extra (pip install -e '.[serve]'): {exc}"
    return None


def stack_versions() -> str:
    """The server stack, as the record states it."""
    from importlib import metadata

    parts = []
    for dist in ("starlette", "uvicorn", "h11", "python-multipart"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return "uvicorn (h11, one process, asyncio) + Starlette: " + ", ".join(parts)
