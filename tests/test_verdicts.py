"""Verdicts a program cannot forge: tests judged outside the sandbox, on the values the program returns.

A corpus of tampering programs (patching what the harness uses, tracing, frames and the garbage
collector, forged records on every fd, exceptions and signals, objects equal to anything), each
scored against the reward of a plain program returning the values its function really returns.
"""

from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict, namedtuple

import pytest

from qlcode.execution.benchmarks import Problem, humaneval, mbpp, python_basics
from qlcode.execution.judge import Raised, Unsupported, decode, decode_leaf, plan, run_tests
from qlcode.execution.reward import case_reward, execution_reward
from qlcode.execution.sandbox import Limits, run

LIMITS = Limits(timeout_s=4, cpu_s=4, memory_mb=512)
MBPP = "tests/data/mbpp.jsonl"

# add(a, b); eight asserts of the usual shapes; the expected values never enter the sandbox
TEST = """import math
assert add(1, 2) == 3
assert add(-1, 1) == 0
assert abs(add(0.1, 0.2) - 0.3) < 1e-9
assert math.isclose(add(1e-3, 1e-3), 2e-3)
assert not add(0, 0)
assert add(1, 1)
assert add([1], [2]) == [1, 2]
assert set(add((3, 4), (4, 5))) == set((3, 4, 5))
"""
NAMES = frozenset({"add"})

# what the harness (or our process) might use, tampered with; each function returns 0 in the end,
# or a value that makes no check hold: a plain `return 0` earns what it should
RETURN_ZERO = "def add(a, b):\n    return 0\n"
FORGED_RECORD = '''
import gc, os, json
def _forge():
    frame = __import__("sys")._getframe()
    while frame and "nonce" not in frame.f_locals:
        frame = frame.f_back
    nonce = frame.f_locals["nonce"] if frame else "0" * 32
    record = {"nonce": nonce, "error": None, "cases": [True] * 8, "values": [["bool", True]] * 8}
    for fd in range(0, 64):
        try:
            os.write(fd, (json.dumps(record) + "\\n").encode())
        except OSError:
            pass
'''
TAMPERING = {
    "json._default_encoder replaced (the issue's exploit)": RETURN_ZERO + '''
import json
class Forge(json.JSONEncoder):
    def encode(self, o):
        if isinstance(o, dict) and "nonce" in o:
            o = dict(o, error=None, cases=[True] * 8, values=[["bool", True]] * len(o.get("values") or [0] * 8))
        return super().encode(o)
json._default_encoder = Forge()
''',
    "json.dumps replaced": RETURN_ZERO + '''
import json
real = json.dumps
json.dumps = lambda o, *a, **k: real(dict(o, error=None, values=[["int", "3"]] * 8) if isinstance(o, dict) else o)
''',
    "builtins patched (isinstance, issubclass, type, eval, compile, repr)": RETURN_ZERO + '''
import builtins
builtins.isinstance = lambda *a: True
builtins.issubclass = lambda *a: True
builtins.repr = lambda o: "3"
real_eval = builtins.eval
builtins.eval = lambda *a, **k: 3
''',
    "os.write replaced to rewrite the record": RETURN_ZERO + '''
import os
real = os.write
def write(fd, data):
    if b"nonce" in data:
        data = data.replace(b'"values": [', b'"values": [["bool", true], ')
    return real(fd, data)
os.write = write
''',
    "a trace that rewrites the harness's locals": RETURN_ZERO + '''
import sys
def tracer(frame, event, arg):
    if "values" in frame.f_locals and isinstance(frame.f_locals["values"], list):
        frame.f_locals["values"][:] = [["bool", True]] * 8
    return tracer
sys.settrace(tracer)
sys._getframe().f_back.f_trace = tracer
''',
    "the garbage collector's objects: every list made to look like passing values": RETURN_ZERO + '''
import gc
def add(a, b):
    for o in gc.get_objects():
        if type(o) is list and o and o[0] == ["int", "0"]:
            o[:] = [["bool", True]] * len(o)
    return 0
''',
    "a forged record on every fd, then os._exit": FORGED_RECORD + "def add(a, b):\n    _forge()\n    os._exit(0)\n",
    "a forged record on every fd, then returning 0": FORGED_RECORD + "def add(a, b):\n    _forge()\n    return 0\n",
    "an object whose == always holds": '''
class Equal:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __bool__(self): return True
    def __sub__(self, other): return 0
    def __abs__(self): return 0
    def __float__(self): return 0.0
    def __iter__(self): return iter([3, 4, 5])
def add(a, b):
    return Equal()
''',
    "an int subclass whose == always holds": '''
class Int(int):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = int.__hash__
    def __bool__(self): return True
def add(a, b):
    return Int(0)
''',
    "a list subclass whose iteration lies": '''
class List(list):
    def __iter__(self): return iter([1, 2])
    def __eq__(self, other): return True
    def __len__(self): return 2
def add(a, b):
    return List()
''',
    "an object pretending to be an int (__class__)": '''
class Fake:
    __class__ = int
    def __index__(self): return 3
    def __eq__(self, other): return True
def add(a, b):
    return Fake()
''',
    "a cyclic list": "def add(a, b):\n    l = []\n    l.append(l)\n    return l\n",
    "a value too large to send": "def add(a, b):\n    return 'x' * 50_000_000\n",
    "raising in __eq__ and __hash__": '''
class Boom:
    def __eq__(self, other): raise SystemExit(0)
    def __hash__(self): raise SystemExit(0)
def add(a, b):
    return Boom()
''',
    "SystemExit from the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "KeyboardInterrupt from the call": "def add(a, b):\n    raise KeyboardInterrupt\n",
    "killing itself with a signal": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGTERM)\n",
    "an alarm during the checks": "import signal\nsignal.alarm(1)\ndef add(a, b):\n    return 0\n",
    "a forged record nested too deep for json": RETURN_ZERO + '''
import os
os.write(3, b'{"nonce": 1, "values": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\\n")
''',
    "an atexit hook that writes": RETURN_ZERO + '''
import atexit, os
atexit.register(lambda: os.write(3, b'{"error": null, "values": [["bool", true]]}\\n'))
''',
}


def _reward(solution: str) -> tuple[float, str]:
    r = run_tests(solution, TEST, LIMITS, NAMES)
    assert r.judged == "outside"
    return case_reward(r), r.outcome


def test_the_test_is_judged_outside_and_the_expected_values_never_enter_the_sandbox():
    p = plan(TEST, NAMES)
    sent = json.dumps(p.steps)
    assert [kind for kind, _ in p.steps] == ["exec"] + ["eval"] * 7 + ["iter"]  # set(add(...)) iterates its value
    assert [src for kind, src in p.steps if kind == "eval"][:3] == ["add(1, 2)", "add(-1, 1)", "add(0.1, 0.2)"]
    assert "0.3" not in sent and "2e-3" not in sent and "0.002" not in sent and "3, 4, 5" not in sent
    assert _reward("def add(a, b):\n    return a + b if not isinstance(a, tuple) else a + b\n") == (1.0, "passed")


def test_an_expected_value_bound_to_a_name_stays_out_of_sight():
    test = "expected = [1, 2]\nMETA = {'x': 1}\nassert f() == expected\nassert f()[0] == META['x']"
    assert [src for _, src in plan(test, frozenset({"f"})).steps] == ["f()", "f()"]
    peek = "def f():\n    import sys\n    return sys.modules['__main__'].__dict__.get('expected')\n"
    assert run_tests(peek, test, LIMITS, frozenset({"f"})).cases == [False, False]
    assert run_tests("def f():\n    return [1, 2]\n", test, LIMITS, frozenset({"f"})).outcome == "passed"


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_tampering_earns_no_more_than_the_values_it_returns(name):
    honest, _ = _reward(RETURN_ZERO)  # add() == 0 holds for `add(-1, 1) == 0` and `not add(0, 0)`: 2 of 8
    assert honest == 2 / 8
    reward, outcome = _reward(TAMPERING[name])
    assert outcome != "passed" and reward <= honest, (name, reward, outcome)


def test_the_issue_exploit_passed_inside_and_fails_outside():
    """The json._default_encoder patch forges the inside verdict of a test that does not decompose; the
    same program judged outside earns only what its values earn."""
    exploit = TAMPERING["json._default_encoder replaced (the issue's exploit)"]
    inside = run(exploit, LIMITS, cases=["assert add(1, 2) == 3"] * 8)
    assert inside.outcome == "passed" and inside.cases == [True] * 8, "the inside verdict is forgeable"
    reward, outcome = _reward(exploit)  # every value forged to True: only `assert add(1, 1)` holds for it
    assert reward == 1 / 8 and outcome != "passed"


def test_a_cases_list_of_the_wrong_length_is_refused():
    forge_one = RETURN_ZERO + '''
import json
class Forge(json.JSONEncoder):
    def encode(self, o):
        return super().encode(dict(o, error=None, cases=[True]) if isinstance(o, dict) and "nonce" in o else o)
json._default_encoder = Forge()
'''
    r = run(forge_one, LIMITS, cases=["assert add(1, 2) == 3", "assert add(2, 2) == 4"])
    assert (r.outcome, r.error_type, r.cases, case_reward(r)) == ("error", "MalformedRecord", None, 0.0)


def test_more_values_than_calls_is_refused():
    forged = RETURN_ZERO + '''
import json
class Forge(json.JSONEncoder):
    def encode(self, o):
        return super().encode(dict(o, values=[["int", "3"]] * 9) if isinstance(o, dict) and "nonce" in o else o)
json._default_encoder = Forge()
'''
    r = run_tests(forged, TEST, LIMITS, NAMES)
    assert (r.outcome, r.error_type, r.cases) == ("error", "MalformedRecord", [False] * 8)


# ---- the strict decoder ----

@pytest.mark.parametrize("node, value", [
    (["none"], None), (["bool", True], True), (["int", "-ff"], -255), (["int", "0"], 0),
    (["float", "0x1.8000000000000p+0"], 1.5), (["float", "-0x0.0p+0"], -0.0), (["float", "inf"], math.inf),
    (["str", "a\udc80"], "a\udc80"), (["bytes", "00ff"], b"\x00\xff"), (["list", [["int", "1"]]], [1]),
    (["tuple", [["str", "a"], ["none"]]], ("a", None)), (["set", [["int", "1"], ["int", "2"]]], {1, 2}),
    (["dict", [[["tuple", [["int", "1"]]], ["list", []]]]], {(1,): []}),
    (["set", [["set", [["int", "1"]]]]], {frozenset({1})}),
])
def test_decode_reads_each_allowed_type(node, value):
    decoded = decode(node)
    assert decoded == value and type(decoded) is (frozenset if type(value) is set else type(value))


@pytest.mark.parametrize("node", [
    ["int", "1z"], ["int", 3], ["int", ""], ["int", "0x10"], ["bool", 1], ["float", "1.5"], ["float", "0x" + "1" * 40], ["float", "0x1p3"], ["float", "infinity"],
    ["bytes", "0g"], ["bytes", "abc"], ["str", 3], ["none", 1], ["list", [1]], ["list", "ab"], ["dict", [[["int", "1"]]]],
    ["dict", [[["list", []], ["none"]]]], ["set", [["dict", []]]], ["object", "x"], [], "str", {"str": "a"}, None,
    ["list", []] + [1], ["raise"], ["unsupported", "x", "y"],
])
def test_decode_refuses_anything_else(node):
    assert isinstance(decode_leaf(node), Unsupported)


def test_a_deeply_nested_value_is_refused_not_a_crash():
    node: list = ["none"]
    for _ in range(100_000):
        node = ["list", [node]]
    assert isinstance(decode_leaf(node), Unsupported)


def test_raised_names_are_identifiers():
    assert decode_leaf(["raise", "ValueError"]) == Raised("ValueError")
    assert decode_leaf(["raise", "not a name; rm -rf"]) == Raised("Exception")


# ---- Python's == on honest values, reproduced ----

Point = namedtuple("Point", "x y")


@pytest.mark.parametrize("returned, expected", [
    ("1", "1.0"), ("(1, 2)", "[1, 2]"), ("[1, 2]", "[1, 2]"), ("True", "1"), ("1", "True"), ("0.1 + 0.2", "0.3"),
    ("{1: 'a'}", "{1.0: 'a'}"), ("{1, 2}", "{2, 1}"), ("frozenset({1})", "{1}"), ("'a'", "b'a'"), ("b'a'", "b'a'"),
    ("None", "0"), ("None", "None"), ("-0.0", "0.0"), ("float('nan')", "float('nan')"), ("[]", "()"), ("'1'", "1"),
    ("{'a': [1, (2, 3)]}", "{'a': [1, (2, 3)]}"), ("10 ** 30", "10 ** 30"), ("2 ** 0.5", "1.4142135623730951"),
    ("Point(1, 2)", "(1, 2)"), ("OrderedDict(a=1, b=2)", "{'b': 2, 'a': 1}"), ("Counter('aab')", "{'a': 2, 'b': 1}"),
    ("[1, [2, [3]]]", "[1, [2, [3.0]]]"), ("'é'", "'é'"), ("1.5", "3 / 2"), ("7 // 2", "3"),
])
def test_outside_verdicts_reproduce_pythons_equality(returned, expected):
    solution = f"from collections import Counter, OrderedDict, namedtuple\nPoint = namedtuple('Point', 'x y')\ndef f():\n    return {returned}\n"
    python = eval(returned, {"Point": Point, "OrderedDict": OrderedDict, "Counter": Counter}) == eval(expected)  # noqa: S307  our own literals
    r = run_tests(solution, f"assert f() == {expected}", LIMITS, frozenset({"f"}))
    assert r.judged == "outside" and (r.outcome == "passed") == python, (returned, expected, r.outcome, r.error_type)


@pytest.mark.parametrize("returned, test, passes", [
    ("(x for x in [3, 1])", "assert sorted(f()) == [1, 3]", True),
    ("map(str, [1, 2])", "assert list(f()) == ['1', '2']", True),
    ("{'a': 1}.keys()", "assert set(f()) == {'a'}", True),
    ("iter([1, 2])", "assert len(list(f())) == 2", True),
    ("(x for x in [3, 1])", "assert f() == [3, 1]", False),  # a generator is not a list, as in Python
    ("__import__('numpy').int64(3)", "assert f() == 3", True),
    ("__import__('numpy').float64(0.5)", "assert f() == 0.5", True),
    ("__import__('numpy').bool_(True)", "assert f()", True),
    ("__import__('numpy').array([1, 2])", "assert f() == [1, 2]", False),  # an array's == is an array: unsupported
])
def test_values_python_would_iterate_or_compare_are_judged_as_python_would(returned, test, passes):
    r = run_tests(f"def f():\n    return {returned}\n", test, LIMITS, frozenset({"f"}))
    assert r.judged == "outside" and (r.outcome == "passed") == passes, (r.outcome, r.error_type)


def test_exceptions_are_failures_with_their_name_and_other_cases_still_count():
    solution = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
    r = run_tests(solution, "assert f(1) == 1\nassert f(-1) == -1\nassert f(2) == 2", LIMITS, frozenset({"f"}))
    assert (r.outcome, r.error_type, r.cases, r.judged) == ("error", "ValueError", [True, False, True], "outside")
    assert "ValueError: negative" in r.stderr  # the call's traceback, as a failing assert printed it
    assert r.stderr.endswith("judged outside: assert f(-1) == -1 -> ValueError, values [\"Raised(name='ValueError')\"]")


def test_a_program_that_defines_a_builtins_name_is_called_not_the_builtin():
    """MBPP/126 defines `sum`; its tests call that one. Names come from the reference, not the program."""
    p = next(p for p in mbpp(MBPP) if p.task_id == "MBPP/126")
    assert "sum" in p.names and p.run(p.reference, LIMITS).outcome == "passed"
    assert p.run("def sum(a, b):\n    return 0\n", LIMITS).outcome == "failed"


def test_share_judged_outside_on_the_benchmarks():
    """At least 95% of HumanEval, MBPP and python-basics decompose (measured: 160/164, 500/500, 168/168)."""
    for problems, least in ((humaneval(), 160), (mbpp(MBPP), 500), (python_basics(None), 168)):
        assert sum(plan(p.test, p.names) is not None for p in problems) >= least


def test_tests_that_do_not_decompose_run_inside():
    for test in ("import doctest\ndoctest.testmod()", "import random\nfor _ in range(3):\n    x = random.random()\n    assert f(x) == x",
                 "assert all(f(x) == x for x in [1, 2])", "x = [3, 1]\nf(x)\nassert x == [1, 3]"):
        assert plan(test, frozenset({"f"})) is None, test
    r = run_tests("def f(x):\n    x.sort()\n", "x = [3, 1]\nf(x)\nassert x == [1, 3]", LIMITS, frozenset({"f"}))
    assert (r.outcome, r.judged) == ("passed", "inside")


def test_a_loop_is_one_case_as_inside():
    fib = Problem("t/0", "def fib(n):\n", "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
                  "assert fib(0) == 0\nfor n in range(2, 6):\n    assert fib(n) == fib(n - 1) + fib(n - 2)\nassert fib(10) == 55",
                  True, entry_point="fib")
    assert plan(fib.test, fib.names).cases == 3
    r = fib.run("    return n if n < 2 else 0\n", LIMITS)
    assert (r.cases, r.judged) == ([True, False, False], "outside")
    assert execution_reward([(fib.solution(fib.reference), fib.test, fib.names)], LIMITS) == [1.0]
