"""The row formats, one module each; FORMATS maps a recipe's `format:` name to its class.

Adding a format is one module in this package defining a DataFormat subclass with a new `name`
(and the name in qlcode.recipe.Format, which a test keeps in step with FORMATS).
"""

from __future__ import annotations

import importlib
import pkgutil

from qlcode.data.formats.base import DataFormat


def _discover() -> dict[str, DataFormat]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found, todo = {}, list(DataFormat.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        found[cls.name] = cls()
    return dict(sorted(found.items()))


FORMATS: dict[str, DataFormat] = _discover()


def method_problem(fmt: str, method: str) -> str | None:
    """Why rows of this format cannot train with this method, or None."""
    if method in FORMATS[fmt].methods:
        return None
    fitting = [f for f in FORMATS.values() if method in f.methods]
    if len(fitting) == 1:
        return f"train.method {method} needs {fitting[0].name} data ({fitting[0].short}), got {fmt}"
    names = [f.name for f in fitting]
    return (f"train.method {method} needs {', '.join(names[:-1])} or {names[-1]} data, got {fmt} "
            f"(it trains with train.method: {' or '.join(FORMATS[fmt].methods)})")
