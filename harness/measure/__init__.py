"""The measuring instrument.

timers    `make_timer(stream)`: CUDA events on the runtime's stream, or the host clock
protocol  `measure(...)` (model scope) and `measure_stages(...)` (end-to-end, per stage):
          warm-up, stop rules, pause, sustained mode; raw samples only
stats     `summarize`, `unstable_reasons`, `is_launch_bound`, `windows`, and `build_latency`,
          the one function that turns a measurement into the record's `Latency`

Nothing here imports torch at module import time.
"""
