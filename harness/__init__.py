"""detbench harness: reproducible latency and accuracy numbers for exported object detectors.

Import-light on purpose: `bench --help` must not pull torch or onnxruntime.
"""

__version__ = "0.1.0"
