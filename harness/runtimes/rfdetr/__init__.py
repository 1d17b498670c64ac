"""rfdetr's own inference paths, timed as users call them: `predict()` out of the box, and
`inference()` (torchscript or inductor, the "FP16+JIT" path) followed by `predict()`."""

from typing import Literal

from pydantic import Field

from harness.runtimes.plugin import ALL_SCOPES, RuntimePlugin, RuntimeSettings, TuneOption


class RfdetrSettings(RuntimeSettings):
    # rfdetr's inference(): how the optimized module is built.
    compile_backend: Literal["torchscript", "inductor"] = "torchscript"
    compile: bool = True
    # predict()'s score threshold. 0 keeps every detection, which the accuracy pass needs.
    threshold: float = Field(default=0.0, ge=0.0, le=1.0)


def _plugin(name: str, title: str, summary: str, cls: str, scopes: frozenset[str],
            tune: tuple[TuneOption, ...] = ()) -> RuntimePlugin:
    return RuntimePlugin(
        name=name,
        title=title,
        summary=summary,
        implementation=f"harness.runtimes.rfdetr.runtime:{cls}",
        device="any",
        precisions=frozenset({"fp32", "fp16", "bf16"}),
        scopes=scopes,
        settings=RfdetrSettings,
        needs=frozenset({"rfdetr"}),
        libraries=("torch", "torchvision", "rfdetr"),
        tune_options=tune,
    )


PLUGINS = [
    # predict() takes images, so only the end-to-end scope exists.
    _plugin("rfdetr-predict", "rfdetr predict()", "rfdetr's own predict(): images in, detections out, as a user calls it",
            "RfdetrPredictRuntime", frozenset({"end_to_end"})),
    _plugin("rfdetr-optimized", "rfdetr inference()",
            "rfdetr's inference() (torchscript or inductor), then predict() or the optimized module",
            "RfdetrOptimizedRuntime", ALL_SCOPES,
            # rfdetr's two optimized paths: the torchscript trace and torch.compile's inductor.
            (TuneOption("compile_backend", ("torchscript", "inductor")),)),
]
