"""The base of every recipe section, apart from the recipe itself so that training methods can
declare their own sections without importing the recipe (which imports them)."""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

DType = Literal["auto", "bf16", "fp16", "fp32"]
LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # a dataset source with one of these is a local file


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or bool in typing.get_args(annotation) or any(
        _takes_bool(a) for a in typing.get_args(annotation))


class Section(BaseModel):
    """A recipe section: unknown keys are errors, so a typo never silently falls back to a default;
    infinite and NaN numbers are errors (an infinite learning rate, warmup or epoch count trains nothing)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML's true is not 1: `lora.r: true` would otherwise train with r=1."""
        if isinstance(v, bool) and not _takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"expected a value of type {_type_word(cls.model_fields[info.field_name].annotation)}, "
                             f"not {str(v).lower()}")
        return v


def _type_word(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return " or ".join(getattr(a, "__name__", str(a)) for a in args)
