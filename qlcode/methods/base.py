"""What a training method is: its recipe section, the row kinds it trains on, its TRL config and
trainer, and its lines in the model card. One file per method implements this."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from qlcode.schema import Section

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

    from qlcode.recipe import Recipe


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the recipe reference
    section: ClassVar[type[Section]]  # its keys, under train.<name>
    formats: ClassVar[tuple[str, ...]]  # data formats it trains on
    unpaired: ClassVar[bool] = False  # trains unpaired rows: preference rows become one row per answer (qlcode.data)

    def config(self, recipe: Recipe, common: dict[str, Any], conversational: bool) -> TrainingArguments:
        """The TRL config: the arguments every method shares, plus this method's own."""
        raise NotImplementedError

    def trainer_class(self) -> type[Trainer]:
        raise NotImplementedError

    def trainer_kwargs(self, recipe: Recipe) -> dict[str, Any]:
        """Arguments of this method's trainer beyond model, args, data, tokenizer and callbacks."""
        return {}

    def check(self, recipe: Recipe) -> list[tuple[tuple, str]]:
        """Recipe rules of this method that span sections: (key path, message naming the fix)."""
        return []

    def card_lines(self, recipe: Recipe) -> list[tuple[str, str]]:
        """Rows of the model card's hyperparameter table that belong to this method."""
        return []

    def options(self, recipe: Recipe) -> Section:
        """This method's section of the recipe (filled with defaults when the recipe omits it)."""
        return getattr(recipe.train, self.name)
