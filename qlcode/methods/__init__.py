"""Training methods, one module each; `train.method` in a recipe names one of them.

Adding a method is one file (a Method subclass with its section, formats, TRL config and trainer)
and one entry below.
"""

from __future__ import annotations

from qlcode.methods import dpo, grpo, kto, orpo, sft
from qlcode.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (sft.METHOD, dpo.METHOD, grpo.METHOD, kto.METHOD, orpo.METHOD)}
