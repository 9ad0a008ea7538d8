"""From a recipe's `data:` section to the datasets TRL consumes (see pipeline.build).

Formats live in qlcode.data.formats (one module each), sources in qlcode.data.sources. The names
below are imported on first use, so `import qlcode.data.formats` stays free of `datasets`.
"""

from __future__ import annotations

_PIPELINE = ("build", "check_sample", "prepared", "render", "rendered")


def __getattr__(name: str):
    if name in _PIPELINE:
        from qlcode.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'qlcode.data' has no attribute {name!r}")
