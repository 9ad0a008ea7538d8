"""text: plain text (code) trained on in full, as in pretraining."""

from __future__ import annotations

from qlcode.data.formats.base import TEXT, DataFormat


class Text(DataFormat):
    name = "text"
    required = ("text",)
    short = "text"
    summary = "text"

    def kind(self, template: str) -> str:
        return TEXT

    def render(self, row: dict, template: str) -> dict:
        return {"text": row["text"]}

    def code(self, row: dict) -> str:
        return row["text"]
