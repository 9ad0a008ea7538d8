"""Build builtin:stdlib-python-instruct: instruction-to-code pairs mined from the standard library.

    python -m qlcode.builtin.build.stdlib_instruct

Each module-level function with a docstring becomes one alpaca row: the instruction gives the
signature and the docstring, the output is the function without its docstring. Rows are
deduplicated on their code. The `test` split holds the functions of HELD_OUT_MODULES, which the
micro model never sees in pretraining; the file ships with the package so every machine gets the
same rows whatever its Python version.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import textwrap

from qlcode.builtin import DATASETS
from qlcode.builtin.stdlib_corpus import is_held_out, iter_sources

MAX_BODY_LINES = 40
MAX_CHARS = 2000


def _without_docstring(fn: ast.FunctionDef, source: str) -> str | None:
    lines = source.splitlines()
    doc = fn.body[0]
    start = fn.lineno if not fn.decorator_list else fn.decorator_list[0].lineno
    kept = lines[start - 1 : doc.lineno - 1] + lines[doc.end_lineno : fn.end_lineno]
    code = textwrap.dedent("\n".join(kept)).strip("\n")
    body_lines = fn.end_lineno - doc.end_lineno
    if not 2 <= body_lines <= MAX_BODY_LINES or len(code) > MAX_CHARS or not code.isascii():
        return None
    return code + "\n"


def rows_of(module: str, source: str) -> list[dict]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    rows = []
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("_"):
            continue
        doc = ast.get_docstring(fn)
        if not doc or len(doc) < 20 or not doc.isascii() or len(fn.body) < 2:
            continue
        code = _without_docstring(fn, source)
        if code is None:
            continue
        signature = f"{fn.name}({ast.unparse(fn.args)})"
        instruction = f"Write a Python function `{signature}`.\n\n{doc.strip()}"
        rows.append({"instruction": instruction, "input": "", "output": code, "module": module, "name": fn.name})
    return rows


def build() -> None:
    seen: set[str] = set()
    splits: dict[str, int] = {"train": 0, "test": 0}
    out = DATASETS["stdlib-python-instruct"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:
        for module, source in iter_sources():
            for row in rows_of(module, source):
                key = hashlib.sha1(" ".join(row["output"].split()).encode()).hexdigest()
                if key in seen:
                    continue
                seen.add(key)
                row["split"] = "test" if is_held_out(module) else "train"
                splits[row["split"]] += 1
                raw.write((json.dumps(row, sort_keys=True) + "\n").encode())
    tmp.replace(out)
    print(f"wrote {out}: {splits}")


if __name__ == "__main__":
    build()
