"""Eager PyTorch on the model's core module (tensor in, tensors out): FP32, FP16, BF16."""

from harness.runtimes.plugin import RuntimePlugin, RuntimeSettings


class TorchSettings(RuntimeSettings):
    """Eager PyTorch takes no settings yet; any key is an error rather than ignored."""


PLUGINS = [
    RuntimePlugin(
        name="torch",
        title="PyTorch",
        summary="eager PyTorch on the model's core module (fp32 / fp16 / bf16)",
        implementation="harness.runtimes.pytorch.runtime:TorchEagerRuntime",
        device="any",
        precisions=frozenset({"fp32", "fp16", "bf16"}),
        settings=TorchSettings,
        needs=frozenset({"torch"}),
        libraries=("torch", "torchvision", "rfdetr"),
        default_reference_precision="fp32",
        device_nms=True,
        default=True,
    )
]
