"""Supervised fine-tuning with TRL's SFTTrainer: conversations, prompt/completion rows, texts."""

from __future__ import annotations

from pydantic import Field

from qlcode.methods.base import Method
from qlcode.schema import Section


class SftSection(Section):
    neftune_noise_alpha: float | None = Field(None, gt=0, description="NEFTune embedding noise (e.g. 5); off when unset.")


class Sft(Method):
    name = "sft"
    summary = "supervised fine-tuning"
    section = SftSection
    formats = ("alpaca", "prompt-completion", "messages", "sharegpt", "openai", "text", "repository")

    def config(self, recipe, common, conversational):
        from trl import SFTConfig

        data = recipe.data
        return SFTConfig(
            **common,
            packing=data.packing,
            # packed rows are one padding-free row whose position ids restart at each sequence: transformers
            # keeps attention within each (SDPA/eager: a block mask from the position ids; flash attention:
            # TRL's cu_seq_lens), tests/test_train_speed.py checks each sequence's loss equals its own
            padding_free=data.packing,
            # repository rows are longer than max_length: split them into pieces instead of truncating
            packing_strategy="bfd_split" if any(d.format == "repository" for d in data.datasets) else "bfd",
            completion_only_loss=data.train_on_completions_only,
            assistant_only_loss=data.train_on_completions_only and conversational,
            neftune_noise_alpha=self.options(recipe).neftune_noise_alpha,
        )

    def trainer_class(self):
        from trl import SFTTrainer

        return SFTTrainer

    def card_lines(self, recipe):
        alpha = self.options(recipe).neftune_noise_alpha
        return [("NEFTune", f"alpha={alpha}")] if alpha else []


METHOD = Sft()
