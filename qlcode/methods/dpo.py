"""Direct Preference Optimization with TRL's DPOTrainer on (prompt, chosen, rejected) rows.

The reference model is no second copy of the base: TRL keeps a frozen copy of the adapter being
trained (for a new adapter, the base itself, so the first loss is ln 2).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from qlcode.methods.base import Method
from qlcode.schema import Section

DpoLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
]


class DpoSection(Section):
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference.")
    loss: list[DpoLoss] = Field(default_factory=lambda: ["sigmoid"],
                                description="TRL loss type(s); several are summed (e.g. [sigmoid, sft]).")

    @field_validator("loss", mode="before")
    @classmethod
    def _one_loss(cls, v):
        if v == []:
            raise ValueError("an empty list trains nothing: name at least one loss, e.g. [sigmoid]")
        return [v] if isinstance(v, str) else v


class Dpo(Method):
    name = "dpo"
    summary = "Direct Preference Optimization"
    section = DpoSection
    formats = ("preference",)

    def config(self, recipe, common, conversational):
        from trl import DPOConfig

        opts = self.options(recipe)
        return DPOConfig(**common, beta=opts.beta, loss_type=list(opts.loss))

    def trainer_class(self):
        from trl import DPOTrainer

        return DPOTrainer

    def card_lines(self, recipe):
        opts = self.options(recipe)
        return [("DPO", f"beta={opts.beta}, loss={opts.loss}")]


METHOD = Dpo()
