"""Errors meant for a user: the CLI prints the message and exits 2, with no traceback.

Anything else that escapes is a bug in qlcode and shows its traceback.
"""


class QlcodeError(Exception):
    """A problem the user can fix; the message names what is wrong and how to fix it."""


class RecipeError(QlcodeError):
    """A recipe that does not validate (file, line, key path, and the fix)."""


class DataError(QlcodeError):
    """A dataset that cannot be read or a row that does not fit its declared format."""


class ModelError(QlcodeError):
    """A base model, adapter or tokenizer that cannot be loaded as the recipe asks."""
