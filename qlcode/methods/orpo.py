"""ORPO (Hong et al. 2024) with TRL's experimental ORPOTrainer: SFT and preference in one loss.

The loss is the chosen answer's language-model loss plus beta (the paper's lambda) times an
odds-ratio term that favours chosen over rejected; no reference model, so no second forward pass.
TRL 1.16 keeps ORPO in trl.experimental (pinned in pyproject.toml); its notice is silenced.
"""

from __future__ import annotations

import os

from pydantic import Field

from qlcode.methods.base import Method
from qlcode.schema import Section


def _trl_orpo():
    """trl.experimental.orpo, without its notice that experimental APIs may change (the version is pinned)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental import orpo

    return orpo


class OrpoSection(Section):
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the chosen answer's LM loss (lambda).")


class Orpo(Method):
    name = "orpo"
    summary = "odds-ratio preference optimization, no reference model"
    section = OrpoSection
    formats = ("preference",)

    def config(self, recipe, common, conversational):
        return _trl_orpo().ORPOConfig(**common, beta=self.options(recipe).beta)

    def trainer_class(self):
        return _trl_orpo().ORPOTrainer

    def card_lines(self, recipe):
        return [("ORPO", f"beta (lambda)={self.options(recipe).beta}")]


METHOD = Orpo()
