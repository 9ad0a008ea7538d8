"""Build the builtin:stdlib-doctests benchmark: standard-library functions tested by their doctests.

    python -m qlcode.builtin.build.stdlib_doctests

A problem is a module-level function whose docstring has `>>>` examples. The model sees the
signature and docstring and writes the body; the program first imports the function's module
namespace (so its helpers and imports exist), defines the function, and runs the docstring's
examples with doctest. Only functions whose own body passes in the sandbox are kept.
"""

from __future__ import annotations

import ast
import gzip
import json

from qlcode.builtin import DATASETS
from qlcode.builtin.stdlib_corpus import iter_sources
from qlcode.execution.benchmarks import Problem
from qlcode.execution.sandbox import Limits, run_many

TEST = """
import doctest as _doctest
_runner = _doctest.DocTestRunner(optionflags=_doctest.ELLIPSIS | _doctest.NORMALIZE_WHITESPACE)
for _t in _doctest.DocTestFinder(recurse=False).find({name}, {name!r}, globs=dict(globals())):
    _runner.run(_t)
assert _runner.failures == 0 and _runner.tries > 0, f"{{_runner.failures}} of {{_runner.tries}} examples failed"
"""


def candidates() -> list[Problem]:
    out = []
    for module, source in iter_sources():
        if module.startswith(("_", "idlelib", "tkinter", "turtle", "ensurepip", "venv", "multiprocessing", "asyncio")):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines(keepends=True)
        for fn in tree.body:
            doc = ast.get_docstring(fn) if isinstance(fn, ast.FunctionDef) else None
            if not doc or ">>>" not in doc or fn.decorator_list or len(fn.body) < 2:
                continue
            head = "".join(lines[fn.lineno - 1 : fn.body[0].end_lineno])  # signature and docstring
            body = "".join(lines[fn.body[0].end_lineno : fn.end_lineno])
            setup = (f"import importlib as _il\n_m = _il.import_module({module!r})\n"
                     "globals().update({k: v for k, v in vars(_m).items() if not k.startswith('__')})\n")
            out.append(Problem(f"stdlib/{module}.{fn.name}", head, body,
                               TEST.format(name=fn.name), True, setup))
    return out


def build() -> None:
    problems = candidates()
    results = run_many([p.program(p.reference) for p in problems], Limits(timeout_s=10, cpu_s=10))
    kept = [p for p, r in zip(problems, results) if r.outcome == "passed"]
    out = DATASETS["stdlib-doctests"]
    tmp = out.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        for p in kept:
            f.write((json.dumps({"task_id": p.task_id, "prompt": p.prompt, "reference": p.reference,
                                 "test": p.test, "setup": p.setup}) + "\n").encode())
    tmp.replace(out)
    print(f"wrote {out}: {len(kept)} of {len(problems)} candidates pass their own doctests")


if __name__ == "__main__":
    build()
