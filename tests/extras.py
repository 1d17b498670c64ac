"""Skips for optional extras that must not be imported just to find out they are there."""

from __future__ import annotations

import pytest


def skip_without_ultralytics() -> None:
    """Skip (the module, or the test) where the yolo extra is absent, without importing it:
    importing ultralytics replaces PIL.Image.open for the whole process (the harness undoes
    that in harness.models.yolo.source.import_ultralytics), and pytest.importorskip at
    collection would patch it under every other test of the session."""
    from importlib.util import find_spec

    if find_spec("ultralytics") is None:
        pytest.skip("the yolo extra: pip install -e '.[yolo]'", allow_module_level=True)
