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
