"""The environment behind every number, and the GPU watched while it is measured.

  capture.py      capture_environment(), format_environment(): versions, host, GPUs, container
  fingerprint.py  comparability_fields(), fingerprint(), fingerprint_differences()
  monitor.py      GpuMonitor: NVML sampling thread, throttle verdict
  conditions.py   wait_for_gpu(): optional cool-down / idle / temperature before a cell
  nvml.py         lazy NVML access shared by the above (device numbering, reason bits)

Import-light: nothing here imports pynvml or torch until a function needs it.
"""
