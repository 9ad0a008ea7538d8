"""Kahneman-Tversky Optimization with TRL's KTOTrainer: unpaired answers labelled good or bad.

KTO needs no pairs, so every executed sample counts (`qlcode pairs --kto-out`: passing = desirable),
not only problems with both a passing and a failing answer. Preference rows train it too: qlcode
splits each pair into its chosen (desirable) and rejected (undesirable) answer, each after its own
conversation (a playground vote on a later turn: the rejected answer's rejected_prompt). The reference
model is the base with the adapter disabled, as for DPO.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qlcode.methods.base import Method
from qlcode.schema import Section


class KtoSection(Section):
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable rows' loss (raise it when they are fewer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable rows' loss.")
    loss: Literal["kto", "apo_zero_unpaired"] = Field("kto", description="TRL loss type.")


class Kto(Method):
    name = "kto"
    summary = "Kahneman-Tversky Optimization on answers labelled good or bad"
    section = KtoSection
    formats = ("kto", "preference")
    unpaired = True

    def config(self, recipe, common, conversational):
        from trl import KTOConfig

        opts = self.options(recipe)
        return KTOConfig(**common, beta=opts.beta, desirable_weight=opts.desirable_weight,
                         undesirable_weight=opts.undesirable_weight, loss_type=opts.loss)

    def trainer_class(self):
        from trl import KTOTrainer

        return KTOTrainer

    def check(self, recipe):
        if self.options(recipe).loss == "kto" and recipe.train.micro_batch_size < 2:
            return [(("train", "micro_batch_size"), "KTO estimates its KL term from the other rows of a micro batch: "
                                                    "set train.micro_batch_size to 2 or more")]
        return []

    def card_lines(self, recipe):
        o = self.options(recipe)
        return [("KTO", f"beta={o.beta}, desirable weight {o.desirable_weight}, undesirable weight {o.undesirable_weight}, "
                        f"loss {o.loss}")]


METHOD = Kto()
