"""Judge tests outside the sandbox: the program returns values, our process decides whether they are right.

A test of the usual shapes (`assert CALL == EXPECTED`, `assert CALL`, `assert not CALL`,
`assert abs(CALL - X) < TOL`, `assert math.isclose(CALL, X)`, HumanEval's `check(candidate)` made of
such lines, loops over literal values) is decomposed with `ast` into a plan: the statements and the
calls (`leaves`) the sandboxed child runs in order, and the checks this process evaluates on the
values the child sends back. The child never sees an expected value; it sends each call's value as
tagged plain data (worker.Encoder), decoded here strictly (`decode`: None, bool, int, float, str,
bytes, list, tuple, dict, set; anything else or malformed fails that check); a check is then
evaluated by a small evaluator of whitelisted operations on those values and the test's literals
(`Evaluator`), never by `eval`. Whatever the program patches, traces or prints in its process, it
passes a check only if the values it returns make the check hold, as they would in Python.

A test that does not decompose (doctests, loops over random inputs, tests that mutate what they
compare) runs as before: inside the sandbox, each assert a case, and Result.judged says "inside".
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from qlcode.execution.sandbox import Limits, Result, run

MAX_CHECKS = 2000  # asserts of one test after unrolling its loops
MAX_DEPTH = 100  # nesting of a decoded value (the child's encoder stops at the same depth)
MAX_INT_HEX = 100_000  # digits of a decoded int
MAX_SIZE = 10**7  # elements a trusted operation may build (a repetition, a power's bits)
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
FLOAT_HEX = re.compile(r"-?(?:0x[01]\.[0-9a-f]{1,13}p[+-][0-9]{1,4}|inf)|nan")  # float.hex's forms only


class Undecomposable(Exception):
    """The test has a shape this module does not judge: it runs inside the sandbox."""


class Malformed(Exception):
    """What the child sent is not a value of the allowed types."""


@dataclass(frozen=True)
class Raised:
    """A call raised this exception (by name) instead of returning."""

    name: str


@dataclass(frozen=True)
class Unsupported:
    """A call returned a value of a type that cannot be sent (or the data was malformed)."""

    what: str


# ---- decoding what the child sent ----

def decode(node: object, depth: int = 0) -> object:
    """A value from its tagged form (worker.Encoder); raises Malformed on anything else."""
    if depth > MAX_DEPTH or not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise Malformed("not a tagged value")
    tag, rest = node[0], node[1:]
    if tag == "none" and not rest:
        return None
    if len(rest) != 1:
        raise Malformed(f"{tag}: wrong arity")
    (payload,) = rest
    if tag == "bool" and isinstance(payload, bool):
        return payload
    if tag == "int" and isinstance(payload, str) and re.fullmatch(r"-?[0-9a-f]{1,%d}" % MAX_INT_HEX, payload):
        return int(payload, 16)
    if tag == "float" and isinstance(payload, str) and FLOAT_HEX.fullmatch(payload):
        return float.fromhex(payload)
    if tag == "str" and isinstance(payload, str):
        return payload
    if tag == "bytes" and isinstance(payload, str) and re.fullmatch(r"(?:[0-9a-f]{2})*", payload):
        return bytes.fromhex(payload)
    if tag in ("list", "tuple", "set") and isinstance(payload, list):
        items = [decode(item, depth + 1) for item in payload]
        try:
            return {"list": list, "tuple": tuple, "set": frozenset}[tag](items)  # frozenset == set, and nests
        except TypeError:
            raise Malformed("unhashable set element") from None
    if tag == "dict" and isinstance(payload, list):
        out = {}
        for pair in payload:
            if not isinstance(pair, list) or len(pair) != 2:
                raise Malformed("dict item")
            key = decode(pair[0], depth + 1)
            try:
                out[key] = decode(pair[1], depth + 1)
            except TypeError:
                raise Malformed("unhashable dict key") from None
        return out
    raise Malformed(f"unknown tag {tag!r}")


def decode_leaf(node: object) -> object:
    """A call's outcome: its value, Raised(name) or Unsupported(what)."""
    if isinstance(node, list) and len(node) == 2 and node[0] in ("raise", "unsupported") and isinstance(node[1], str):
        name = node[1] if IDENTIFIER.fullmatch(node[1]) else "Exception"
        return Raised(name) if node[0] == "raise" else Unsupported(node[1][:64])
    try:
        return decode(node)
    except Malformed as e:
        return Unsupported(f"malformed value ({e})")
    except RecursionError:
        return Unsupported("malformed value (too deep)")


# ---- evaluating a check on trusted values ----

def _isclose(a, b, *, rel_tol=1e-09, abs_tol=0.0):
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def _repeat(a, b):
    """`*`, refusing a sequence repetition that would build more than MAX_SIZE elements."""
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and len(seq) * max(n, 0) > MAX_SIZE:
            raise MemoryError("repetition too large to judge")
    return a * b


def _power(a, b):
    if isinstance(a, int) and isinstance(b, int) and abs(b) > 1 and (abs(b) > MAX_SIZE or a.bit_length() * abs(b) > MAX_SIZE):
        raise MemoryError("power too large to judge")
    return a ** b


FUNCTIONS: dict[str, Callable] = {
    "abs": abs, "round": round, "len": len, "set": set, "frozenset": frozenset, "sorted": sorted, "list": list,
    "tuple": tuple, "dict": dict, "sum": sum, "min": min, "max": max, "all": all, "any": any, "int": int,
    "float": float, "str": str, "bool": bool, "isinstance": isinstance, "reversed": lambda x: list(reversed(x)),
    "math.isclose": _isclose, "math.fabs": math.fabs, "math.sqrt": math.sqrt, "math.floor": math.floor,
    "math.ceil": math.ceil,
}
ITERATING = {"len", "set", "frozenset", "sorted", "list", "tuple", "dict", "sum", "min", "max", "all", "any", "reversed"}
KEYWORDS = {"round": {"ndigits"}, "sorted": {"reverse"}, "math.isclose": {"rel_tol", "abs_tol"}}
CONSTANTS = {"math.pi": math.pi, "math.e": math.e, "math.inf": math.inf, "math.nan": math.nan,
             "int": int, "float": float, "str": str, "bool": bool, "list": list, "tuple": tuple, "dict": dict,
             "set": set, "bytes": bytes}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _repeat, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
           ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def evaluate(node: ast.expr, env: dict[str, object]) -> object:
    """The value of a check's expression: its leaves (Name nodes `leaf#i`) and trusted names from env,
    through whitelisted operations only. Plain values in, plain values out; the test's own
    operations on them (==, abs, set...) give what Python gives."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Attribute):
        return CONSTANTS[_dotted(node)]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [evaluate(e, env) for e in node.elts]
        return {ast.Tuple: tuple, ast.List: list, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        return {evaluate(k, env): evaluate(v, env) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](evaluate(node.operand, env))
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)](evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, ast.BoolOp):
        value = None
        for operand in node.values:
            value = evaluate(operand, env)
            if bool(value) == isinstance(node.op, ast.Or):
                return value
        return value
    if isinstance(node, ast.Compare):
        left = evaluate(node.left, env)
        for op, comparator in zip(node.ops, node.comparators):
            right = evaluate(comparator, env)
            if not COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return evaluate(node.body if evaluate(node.test, env) else node.orelse, env)
    if isinstance(node, ast.Subscript):
        return evaluate(node.value, env)[evaluate(node.slice, env)]
    if isinstance(node, ast.Slice):
        return slice(*(evaluate(p, env) if p is not None else None for p in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Call):
        name = _dotted(node.func)
        return FUNCTIONS[name](*(evaluate(a, env) for a in node.args), **{k.arg: evaluate(k.value, env) for k in node.keywords})
    raise Undecomposable(type(node).__name__)  # the planner admits only the nodes above


# ---- planning: a test as sandbox steps and trusted checks ----

@dataclass(frozen=True)
class Check:
    source: str  # the assert, as judged (loop variables replaced by their values)
    test: ast.expr  # its condition, each leaf a Name `leaf#i`
    leaves: tuple[int, ...]
    case: int  # the test's statement it comes from: a loop's asserts are one case, as inside


@dataclass(frozen=True)
class Plan:
    steps: tuple[tuple[str, str], ...]  # for the child, in the test's order: ("exec", stmt) | ("eval"|"iter", expr)
    checks: tuple[Check, ...]
    cases: int  # statements that assert (Result.cases has one bool each)


def _literal_node(value: object) -> ast.expr:
    """An expression that evaluates to value (a loop variable's, substituted into a call)."""
    node = ast.parse(repr(value), mode="eval").body
    if type(ast.literal_eval(node)) is not type(value) or ast.literal_eval(node) != value:
        raise Undecomposable("a loop value without a literal")
    return node


def _bound_names(stmt: ast.stmt) -> set[str]:
    names = set()
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


class _Planner:
    def __init__(self, names: frozenset[str]) -> None:
        self.steps: list[tuple[str, str]] = []
        self.checks: list[Check] = []
        self.trusted: dict[str, object] = {}  # names bound to literal values, still unchanged
        self.bound: set[str] = set(names)  # every name the test or the program binds (shadowing a whitelisted one)
        self.in_leaves: set[str] = set()  # names a call may have changed (passed to the program)
        self.judged_names: set[str] = set()  # trusted names a check reads
        self.n_leaves = 0
        self.cases = 0
        self.literal_steps: list[tuple[str, int]] = []  # (name, step) of `name = literal`: not sent unless needed

    def statement(self, stmt: ast.stmt, loop: dict[str, object]) -> None:
        if isinstance(stmt, (ast.Assert, ast.For)) and _has_assert(stmt) and not loop:
            self.cases += 1
        if isinstance(stmt, ast.Assert):
            return self.check(stmt, loop)
        if isinstance(stmt, ast.For) and _has_assert(stmt):
            return self.loop(stmt, loop)
        if isinstance(stmt, ast.Pass):
            return None
        if _has_assert(stmt) or loop:
            raise Undecomposable(f"{type(stmt).__name__} around an assert")
        names = _bound_names(stmt)
        self.bound |= names
        for name in names:
            self.trusted.pop(name, None)
        for node in ast.walk(stmt):  # a statement that reads a trusted name may change it (x.append(1))
            if isinstance(node, ast.Name) and node.id in self.trusted:
                self.in_leaves.add(node.id)
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            try:
                self.trusted[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                self.literal_steps.append((stmt.targets[0].id, len(self.steps)))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass
        self.steps.append(("exec", ast.unparse(stmt)))

    def sent_steps(self) -> tuple[tuple[str, str], ...]:
        """The steps, less the literal assignments nothing in the child reads: an expected value
        bound to a name (`expected = [1, 2]`) stays out of the program's sight."""
        unread = {i for name, i in self.literal_steps if name not in self.in_leaves}
        return tuple(step for i, step in enumerate(self.steps) if i not in unread)

    def loop(self, stmt: ast.For, loop: dict[str, object]) -> None:
        if stmt.orelse or not all(isinstance(s, (ast.Assert, ast.Pass)) for s in stmt.body):
            raise Undecomposable("a loop doing more than asserting")
        targets = stmt.target.elts if isinstance(stmt.target, ast.Tuple) else [stmt.target]
        if not all(isinstance(t, ast.Name) for t in targets):
            raise Undecomposable("a loop target that is not a name")
        iterable = self.trusted_value(stmt.iter, loop)
        if isinstance(iterable, range) and len(iterable) > MAX_CHECKS:
            raise Undecomposable("a long loop")
        for value in iterable:
            values = (value,) if len(targets) == 1 else tuple(value)
            if len(values) != len(targets):
                raise Undecomposable("a loop value that does not unpack")
            inner = {**loop, **{t.id: v for t, v in zip(targets, values)}}
            for s in stmt.body:
                self.statement(s, inner)

    def trusted_value(self, node: ast.expr, loop: dict[str, object]) -> object:
        """A loop's iterable: literals and trusted names only (range() allowed), no call into the program."""
        if isinstance(node, ast.Call) and _dotted(node.func) == "range" and "range" not in self.bound and not node.keywords:
            return range(*(self.trusted_value(a, loop) for a in node.args))
        expr = self.expression(node, loop, leaves=None)
        return evaluate(expr, {})

    def check(self, stmt: ast.Assert, loop: dict[str, object]) -> None:
        if len(self.checks) >= MAX_CHECKS:
            raise Undecomposable("too many asserts")
        leaves: list[int] = []
        test = self.expression(stmt.test, loop, leaves)
        source = ast.unparse(ast.Assert(test=_substitute(stmt.test, loop)))
        self.checks.append(Check(source, test, tuple(leaves), self.cases - 1))

    def leaf(self, node: ast.expr, loop: dict[str, object], leaves: list[int] | None, iterated: bool = False) -> ast.expr:
        """Send node to the child: its value comes back as data (what it yields, when `iterated`)."""
        if leaves is None:
            raise Undecomposable("a call where a literal is needed")
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in self.trusted and n.id not in loop:
                self.in_leaves.add(n.id)
        self.steps.append(("iter" if iterated else "eval", ast.unparse(_substitute(node, loop))))
        leaves.append(self.n_leaves)
        self.n_leaves += 1
        return ast.Name(id=f"leaf#{self.n_leaves - 1}", ctx=ast.Load())

    def expression(self, node: ast.expr, loop: dict[str, object], leaves: list[int] | None,
                   iterated: bool = False) -> ast.expr:
        """node with each call into the program (and each name the program may bind) made a leaf;
        `iterated`: node is the argument of a function that iterates it (set, sorted, len...)."""
        rec = functools.partial(self.expression, loop=loop, leaves=leaves)
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Name):
            if node.id in loop:
                return ast.Constant(loop[node.id])
            if node.id in self.trusted:  # its value now (a later binding does not change this check)
                self.judged_names.add(node.id)
                return ast.Constant(self.trusted[node.id])
            if node.id in CONSTANTS and node.id not in self.bound:
                return _constant_ref(node.id)
            return self.leaf(node, loop, leaves, iterated)
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name in CONSTANTS and name.split(".")[0] not in self.bound - {"math"}:
                return _constant_ref(name)
            return self.leaf(node, loop, leaves, iterated)
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in FUNCTIONS and name.split(".")[0] not in self.bound - {"math"}:
                if any(isinstance(a, ast.Starred) for a in node.args) or any(
                        k.arg not in KEYWORDS.get(name, ()) for k in node.keywords):
                    raise Undecomposable(f"{name} with arguments not judged")
                args = [rec(a, iterated=name in ITERATING and len(node.args) == 1) for a in node.args]
                return ast.Call(func=node.func, args=args,
                                keywords=[ast.keyword(arg=k.arg, value=rec(k.value)) for k in node.keywords])
            return self.leaf(node, loop, leaves, iterated)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                raise Undecomposable("a starred display")
            return type(node)(elts=[rec(e) for e in node.elts], ctx=ast.Load())
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise Undecomposable("a dict display with **")
            return ast.Dict(keys=[rec(k) for k in node.keys], values=[rec(v) for v in node.values])
        if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
            return ast.UnaryOp(op=node.op, operand=rec(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            return ast.BinOp(left=rec(node.left), op=node.op, right=rec(node.right))
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[rec(v) for v in node.values])
        if isinstance(node, ast.Compare):
            return ast.Compare(left=rec(node.left), ops=node.ops, comparators=[rec(c) for c in node.comparators])
        if isinstance(node, ast.IfExp):
            return ast.IfExp(test=rec(node.test), body=rec(node.body), orelse=rec(node.orelse))
        if isinstance(node, ast.Subscript):
            return ast.Subscript(value=rec(node.value), slice=rec(node.slice), ctx=ast.Load())
        if isinstance(node, ast.Slice):
            return ast.Slice(*(rec(p) if p is not None else None for p in (node.lower, node.upper, node.step)))
        raise Undecomposable(type(node).__name__)


def _constant_ref(name: str) -> ast.expr:
    """A whitelisted constant (math.pi, a type name), as the evaluator reads it."""
    head, _, attr = name.partition(".")
    if attr:
        return ast.Attribute(value=ast.Name(id=head, ctx=ast.Load()), attr=attr, ctx=ast.Load())
    return ast.Constant(CONSTANTS[name])


class _Substitute(ast.NodeTransformer):
    def __init__(self, loop: dict[str, object]) -> None:
        self.loop = loop

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return _literal_node(self.loop[node.id]) if node.id in self.loop and isinstance(node.ctx, ast.Load) else node


def _substitute(node: ast.expr, loop: dict[str, object]) -> ast.expr:
    import copy

    return _Substitute(loop).visit(copy.deepcopy(node)) if loop else node


def program_names(code: str) -> frozenset[str]:
    """The names a program binds at its top level (MBPP/126 defines `sum`: its tests call that, not
    the built-in). Taken from trusted code (a problem's prompt and reference solution, its entry
    point), never from the program judged: it must not choose how it is judged."""
    try:
        module = ast.parse(code)
    except SyntaxError:
        return frozenset()
    return frozenset(name for stmt in module.body for name in _bound_names(stmt))


@functools.lru_cache(maxsize=4096)
def plan(test: str, names: frozenset[str] = frozenset()) -> Plan | None:
    """The test as steps for the child and checks for us; None when it does not decompose.
    `names`: what the program defines (program_names), so a test's call to it is not a built-in's."""
    try:
        module = ast.parse(test)
    except SyntaxError:
        return None
    planner = _Planner(names)
    checkers = {n.name: n for n in module.body if isinstance(n, ast.FunctionDef) and _has_assert(n)}
    try:
        for stmt in module.body:
            if stmt in checkers.values():
                continue
            call = stmt.value if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) else None
            if call and isinstance(call.func, ast.Name) and call.func.id in checkers:
                function = checkers[call.func.id]
                params = [a.arg for a in function.args.args]
                if len(call.args) != len(params) or call.keywords or function.args.defaults:
                    raise Undecomposable("a check called unlike it is defined")
                for param, arg in zip(params, call.args):
                    planner.statement(ast.Assign(targets=[ast.Name(id=param, ctx=ast.Store())], value=arg, lineno=0), {})
                for inner in function.body:
                    planner.statement(inner, {})
            else:
                planner.statement(stmt, {})
        if not planner.checks:
            raise Undecomposable("no assert")
        if planner.judged_names & planner.in_leaves:
            raise Undecomposable("a name both passed to the program and compared")
    except (Undecomposable, ValueError, TypeError, KeyError, IndexError, ArithmeticError, MemoryError, RecursionError):
        return None
    return Plan(planner.sent_steps(), tuple(planner.checks), planner.cases)


# ---- running and judging ----

def _outcome_of(error: str) -> str:
    return {"AssertionError": "failed", "MemoryError": "oom"}.get(error, "error")


def judge(p: Plan, result: Result) -> Result:
    """The verdict on a run of plan p, decided here from the values the child sent."""
    n_eval = sum(kind != "exec" for kind, _ in p.steps)
    if result.values is None or len(result.values) > n_eval:
        malformed = result.values is not None
        return replace(result, outcome="error" if malformed else result.outcome,
                       error_type="MalformedRecord" if malformed else result.error_type,
                       cases=[False] * p.cases, judged="outside", values=None)
    values = [decode_leaf(v) for v in result.values]
    program_error = result.error_type if result.outcome != "passed" else None
    cases, first, shown = [True] * p.cases, None, ""
    for check in p.checks:
        failure = None
        got = [values[i] if i < len(values) else None for i in check.leaves]
        if any(i >= len(values) for i in check.leaves) or (program_error and not values):
            failure = program_error or "EarlyExit"  # not reached: the program (or a test statement) raised first
        else:
            failure = next((v.name for v in got if isinstance(v, Raised)), None)
            failure = failure or next(("UnsupportedValue" for v in got if isinstance(v, Unsupported)), None)
        if failure is None:
            env = {f"leaf#{i}": v for i, v in zip(check.leaves, got)}
            try:
                failure = None if bool(evaluate(check.test, env)) else "AssertionError"
            except Exception as e:  # noqa: BLE001  as in Python, an assert that raises fails
                failure = type(e).__name__
        cases[check.case] = cases[check.case] and failure is None
        if failure and not first:
            first, shown = failure, f"judged outside: {check.source} -> {failure}, values {[_short(v) for v in got]}"
    if program_error:
        outcome, error = result.outcome, result.error_type
    elif first is None:
        outcome, error = "passed", None
    else:
        outcome, error = ("failed" if first == "UnsupportedValue" else _outcome_of(first)), first
    return replace(result, outcome=outcome, error_type=error, cases=cases, judged="outside",
                   stderr="\n".join(text for text in (result.stderr.rstrip("\n"), shown) if text))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def split_tests(test: str) -> tuple[str, list[str]]:
    """(setup, cases) of a test script for running inside: each statement that asserts is a case, the
    rest is setup. HumanEval's `def check(candidate): ...` followed by `check(f)` becomes
    `candidate = f` and the statements of check's body. A test with no assert (doctests) is one case."""
    module = ast.parse(test)
    setup: list[ast.stmt] = []
    cases: list[ast.stmt] = []
    checks = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef) and _has_assert(node)}
    for node in module.body:
        call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
        if node in checks.values():
            continue
        if call and isinstance(call.func, ast.Name) and call.func.id in checks and len(call.args) == 1:
            check = checks[call.func.id]
            setup.append(ast.Assign([ast.Name(check.args.args[0].arg, ast.Store())], call.args[0], lineno=0))
            for inner in check.body:
                (cases if _has_assert(inner) else setup).append(inner)
        else:
            (cases if _has_assert(node) else setup).append(node)
    if not cases:
        return "", [test]
    return "\n".join(ast.unparse(s) for s in setup), [ast.unparse(c) for c in cases]


def run_tests(solution: str, test: str, limits: Limits = Limits(), names: frozenset[str] = frozenset()) -> Result:
    """Run a solution against a test: judged outside where the test decomposes, else inside (each
    assert a case). Result.cases says which asserts passed, Result.judged where it was decided.
    `names`: the program's own top-level names, from trusted code (program_names)."""
    p = plan(test, names)
    if p is not None:
        return judge(p, run(solution, limits, steps=list(p.steps)))
    try:
        setup, cases = split_tests(test)
    except SyntaxError:  # not a script of its own (it may close a string the prompt opened): one program, one case
        r = run(f"{solution}\n\n{test}\n", limits)
        return replace(r, cases=[r.outcome == "passed"])
    return run(f"{solution}\n\n{setup}\n", limits, cases=cases)


def run_tests_many(jobs: list[tuple[str, str, frozenset[str]]], limits: Limits = Limits(),
                   workers: int | None = None) -> list[Result]:
    """run_tests on each (solution, test, names), in parallel."""
    with ThreadPoolExecutor(workers or max(1, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], limits, job[2]), jobs))
