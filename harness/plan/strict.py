"""The base of every plan model: unknown keys are errors, YAML's types are kept as they are."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # strict: a plan's YAML already has types, so `true` is not a batch size and "3" is not a
    # count; no infinities or NaN in durations, thresholds or limits.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
