"""Training methods, one module each; `train.method` in a recipe names one of them.

Adding a method is one file (a Method subclass with its section, formats, TRL config and trainer)
and one entry below.
"""

from __future__ import annotations

from qlcode.methods import dpo, grpo, kto, orpo, sft
from qlcode.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (sft.METHOD, dpo.METHOD, grpo.METHOD, kto.METHOD, orpo.METHOD)}


def format_problem(fmt: str, method: str) -> str | None:
    """Why rows of this format cannot train with this method (naming the formats that can), or None."""
    from qlcode.data.formats import FORMATS

    if fmt in METHODS[method].formats:
        return None
    fitting = [FORMATS[f] for f in METHODS[method].formats]
    trains = [name for name, m in METHODS.items() if fmt in m.formats]
    if len(fitting) == 1:
        need = f"{fitting[0].name} data ({fitting[0].short})"
    else:
        names = sorted(f.name for f in fitting)
        need = f"{', '.join(names[:-1])} or {names[-1]} data"
    return f"train.method {method} needs {need}, got {fmt}" + (f" (it trains with train.method: {' or '.join(trains)})" if trains else "")
