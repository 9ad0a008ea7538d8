"""What the panes show: each turn as Markdown that displays exactly what was written.

The chat panes render Markdown, where a model's unfenced code would lose its indentation and a
`# comment` line would become a heading. So a chat message keeps its fenced blocks (highlighted,
with a copy button) and everything between them is escaped to show as written. Code of the
complete and infill modes goes in a fence longer than any run of backticks inside it, so a ```
in the code cannot close the block early.
"""

from __future__ import annotations

import re

from qlcode.ui.prompts import Prompt

# a fenced block: an opening line of 3+ backticks, up to a closing line of as many (or the end, while streaming)
_FENCED = re.compile(r"^(`{3,})[^\n`]*\n.*?(?:^\1`*[ \t]*$|\Z)", re.M | re.S)
_INLINE = re.compile(r"([\\`*_<\[\]|~$])")  # what Markdown reads anywhere in a line (emphasis, code, HTML, links, tables)
_LINE_START = re.compile(r"^([ \t]*)(\d*)([#>+=-]|(?<=\d)[.)])", re.M)  # what it reads at a line's start (headings, quotes, lists)


def fence(code: str, language: str = "python") -> str:
    """Code as one Markdown code block, whatever backticks it holds."""
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    marks = "`" * max(3, longest + 1)
    return f"{marks}{language}\n{code.rstrip()}\n{marks}"


def _as_written(text: str) -> str:
    """Markdown that shows text exactly as written: what Markdown would read as markup is escaped,
    and leading spaces are kept (as non-breaking ones)."""
    text = _INLINE.sub(r"\\\1", text.replace("&", "&amp;"))
    text = _LINE_START.sub(r"\1\2\\\3", text)
    return "\n".join(re.sub(r"^[ \t]+", lambda m: m.group().replace("\t", "    ").replace(" ", "&nbsp;"), line)
                     for line in text.split("\n"))


def literal(text: str) -> str:
    """A chat message for the pane: fenced blocks as they are, the text around them as written."""
    out, at = [], 0
    for block in _FENCED.finditer(text):
        out += [_as_written(text[at:block.start()]), block.group()]
        at = block.end()
    return "".join(out + [_as_written(text[at:])])


def turn(prompt: Prompt, answer: str) -> list[dict]:
    """A pane's transcript entry: a chat turn as written; complete and infill show the prompt and the
    whole program the answer makes (what the tests run), as code."""
    if prompt.mode == "chat":
        return [{"role": "user", "content": literal(prompt.shown())}, {"role": "assistant", "content": literal(answer)}]
    return [{"role": "user", "content": fence(prompt.shown())}, {"role": "assistant", "content": fence(prompt.program(answer))}]
