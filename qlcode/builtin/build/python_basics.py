"""Build builtin:python-basics: one-line Python functions with assert tests, for learning from execution.

    python -m qlcode.builtin.build.python_basics

Reinforcement learning from unit tests (GRPO, and DPO/KTO pairs from `qlcode pairs`) needs problems
the model sometimes solves and sometimes does not: a group of samples that all fail (or all pass)
has no advantage to learn from. The micro model solves no HumanEval or stdlib-doctests problem, so
this set is what it can earn reward on: each task is one expression of the standard library's
vocabulary (`a + b`, `len(items)`, `s.upper()`, `sorted(d)`), asked by a one-line docstring, with
the prompt ending at `return` so a completion is that expression. Every task comes in three
namings (function and parameter names); whole tasks, all their namings, form the held-out `test`
split, so a model trained on `train` never sees a held-out task in any naming. Expected values are
computed from the reference expressions here (our own code, not a model's); the tests check that
every reference passes its asserts in the sandbox.
"""

from __future__ import annotations

import gzip
import json

from qlcode.builtin import DATASETS

# (docstring with {0}, {1}... for the parameters, reference expression, namings, argument tuples)
Task = tuple[str, str, list[tuple[str, str]], list[tuple]]

# Asked in words a model can copy: the answer is a parameter or a constant.
TRIVIAL: list[Task] = [
    ("Return {0} unchanged.", "{0}", [("identity", "x"), ("same", "value"), ("echo", "obj")], [(1,), ("a",), ([2],)]),
    ("Return {0} and ignore {1}.", "{0}", [("keep_first", "a, b"), ("left", "x, y"), ("pick_first", "first, second")], [(1, 2), ("a", "b"), (None, 3)]),
    ("Return {1} and ignore {0}.", "{1}", [("keep_second", "a, b"), ("right", "x, y"), ("pick_second", "first, second")], [(1, 2), ("a", "b"), (None, 3)]),
    ("Return True.", "True", [("always_true", ""), ("yes", ""), ("ok", "")], [()]),
    ("Return False.", "False", [("always_false", ""), ("no", ""), ("never", "")], [()]),
    ("Return an empty list.", "[]", [("empty_list", ""), ("new_list", ""), ("no_items", "")], [()]),
    ("Return an empty dict.", "{{}}", [("empty_dict", ""), ("new_table", ""), ("no_entries", "")], [()]),
    ("Return zero.", "0", [("zero", ""), ("nil", ""), ("origin", "")], [()]),
    ("Return the empty string.", "''", [("empty_string", ""), ("blank", ""), ("no_text", "")], [()]),
    ("Return {0} as a boolean.", "bool({0})", [("to_bool", "x"), ("truthy", "value"), ("as_bool", "obj")], [(0,), (3,), ("",)]),
]

# Asked in words that name an operation; the third naming's docstring spells the expression out.
DESCRIBED: list[Task] = [
    ("Return the sum of {0} and {1}.", "{0} + {1}", [("add", "a, b"), ("plus", "x, y"), ("sum_of", "m, n")], [(1, 2), (10, -3), (0, 0)]),
    ("Return {0} minus {1}.", "{0} - {1}", [("subtract", "a, b"), ("minus", "x, y"), ("difference", "m, n")], [(5, 2), (1, 4), (7, 7)]),
    ("Return the product of {0} and {1}.", "{0} * {1}", [("multiply", "a, b"), ("times", "x, y"), ("product", "m, n")], [(2, 3), (-1, 5), (0, 9)]),
    ("Return {0} plus one.", "{0} + 1", [("increment", "n"), ("next_number", "x"), ("add_one", "value")], [(1,), (-1,), (41,)]),
    ("Return {0} minus one.", "{0} - 1", [("decrement", "n"), ("previous", "x"), ("sub_one", "value")], [(1,), (0,), (10,)]),
    ("Return twice {0}.", "{0} * 2", [("double", "n"), ("twice", "x"), ("times_two", "value")], [(2,), (-3,), (0,)]),
    ("Return the square of {0}.", "{0} * {0}", [("square", "n"), ("squared", "x"), ("sq", "value")], [(3,), (-2,), (0,)]),
    ("Return the negation of {0}.", "-{0}", [("negate", "n"), ("negative", "x"), ("neg", "value")], [(3,), (-2,), (0,)]),
    ("Return the absolute value of {0}.", "abs({0})", [("absolute", "n"), ("magnitude", "x"), ("abs_value", "value")], [(-3,), (4,), (0,)]),
    ("Return True if {0} is even.", "{0} % 2 == 0", [("is_even", "n"), ("even", "x"), ("is_even_number", "value")], [(2,), (3,), (0,), (-5,)]),
    ("Return True if {0} is positive.", "{0} > 0", [("is_positive", "n"), ("positive", "x"), ("above_zero", "value")], [(1,), (-2,), (0,)]),
    ("Return the larger of {0} and {1}.", "max({0}, {1})", [("larger", "a, b"), ("bigger", "x, y"), ("greater_of", "m, n")], [(1, 2), (5, 3), (-1, -4)]),
    ("Return the smaller of {0} and {1}.", "min({0}, {1})", [("smaller", "a, b"), ("lesser", "x, y"), ("lower_of", "m, n")], [(1, 2), (5, 3), (-1, -4)]),
    ("Return the length of {0}.", "len({0})", [("length", "items"), ("size", "seq"), ("count_items", "values")], [([1, 2, 3],), ("ab",), ([],)]),
    ("Return the first element of {0}.", "{0}[0]", [("first", "items"), ("head", "seq"), ("first_item", "values")], [([1, 2, 3],), ("xyz",), ([7],)]),
    ("Return the last element of {0}.", "{0}[-1]", [("last", "items"), ("final", "seq"), ("last_item", "values")], [([1, 2, 3],), ("xyz",), ([7],)]),
    ("Return the sum of the numbers in {0}.", "sum({0})", [("total", "items"), ("sum_list", "seq"), ("add_all", "values")], [([1, 2, 3],), ([],), ([-1, 1, 5],)]),
    ("Return the largest number in {0}.", "max({0})", [("largest", "items"), ("biggest", "seq"), ("max_item", "values")], [([1, 5, 3],), ([-2, -1],), ([4],)]),
    ("Return the smallest number in {0}.", "min({0})", [("smallest", "items"), ("least", "seq"), ("min_item", "values")], [([1, 5, 3],), ([-2, -1],), ([4],)]),
    ("Return {0} sorted in ascending order.", "sorted({0})", [("sort_items", "items"), ("sorted_copy", "seq"), ("in_order", "values")], [([3, 1, 2],), ([],), ([5, 5, 1],)]),
    ("Return {0} in reverse order.", "{0}[::-1]", [("reverse", "items"), ("reversed_copy", "seq"), ("backwards", "values")], [([1, 2, 3],), ("abc",), ([],)]),
    ("Return {0} as a list.", "list({0})", [("to_list", "items"), ("as_list", "seq"), ("listify", "values")], [((1, 2),), ("ab",), ((),)]),
    ("Return {0} as a tuple.", "tuple({0})", [("to_tuple", "items"), ("as_tuple", "seq"), ("tuplify", "values")], [([1, 2],), ("ab",), ([],)]),
    ("Return the set of distinct elements of {0}.", "set({0})", [("unique", "items"), ("distinct", "seq"), ("to_set", "values")], [([1, 1, 2],), ("aba",), ([],)]),
    ("Return {0} in upper case.", "{0}.upper()", [("upper", "s"), ("shout", "text"), ("to_upper", "word")], [("abc",), ("Hi",), ("",)]),
    ("Return {0} in lower case.", "{0}.lower()", [("lower", "s"), ("whisper", "text"), ("to_lower", "word")], [("ABC",), ("Hi",), ("",)]),
    ("Return {0} without leading and trailing whitespace.", "{0}.strip()", [("strip", "s"), ("trim", "text"), ("clean", "word")], [("  a ",), ("b",), ("\tc\n",)]),
    ("Return the words of {0}.", "{0}.split()", [("words", "s"), ("split_words", "text"), ("tokens", "line")], [("a b c",), ("one",), ("",)]),
    ("Join the strings in {0} with commas.", "','.join({0})", [("join_commas", "items"), ("comma_join", "seq"), ("csv_line", "values")], [(["a", "b"],), ([],), (["x"],)]),
    ("Return {0} converted to a string.", "str({0})", [("to_string", "x"), ("as_str", "value"), ("stringify", "obj")], [(12,), (1.5,), (None,)]),
    ("Return {0} converted to an integer.", "int({0})", [("to_int", "x"), ("as_int", "value"), ("parse_int", "s")], [("12",), ("-3",), (7.9,)]),
    ("Return True if {0} is None.", "{0} is None", [("is_none", "x"), ("missing", "value"), ("is_null", "obj")], [(None,), (0,), ("",)]),
    ("Return True if {0} is in {1}.", "{0} in {1}", [("contains", "item, items"), ("has_item", "x, seq"), ("member", "value, values")], [(1, [1, 2]), (3, [1, 2]), ("a", "cat")]),
    ("Return the number of times {1} occurs in {0}.", "{0}.count({1})", [("count", "items, x"), ("occurrences", "seq, item"), ("count_of", "values, value")], [([1, 2, 1], 1), ("banana", "a"), ([], 0)]),
    ("Return True if {0} starts with {1}.", "{0}.startswith({1})", [("starts_with", "s, prefix"), ("has_prefix", "text, start"), ("begins_with", "word, head")], [("hello", "he"), ("hello", "lo"), ("", "")]),
    ("Return True if {0} ends with {1}.", "{0}.endswith({1})", [("ends_with", "s, suffix"), ("has_suffix", "text, end"), ("finishes_with", "word, tail")], [("hello", "lo"), ("hello", "he"), ("", "")]),
    ("Return {0} repeated {1} times.", "{0} * {1}", [("repeat", "s, n"), ("repeated", "text, times"), ("copies", "word, count")], [("ab", 2), ("x", 0), ("-", 3)]),
    ("Return the value for {1} in {0}, or None if it is missing.", "{0}.get({1})", [("lookup", "d, key"), ("get_value", "table, name"), ("find_value", "mapping, k")], [({"a": 1}, "a"), ({}, "b"), ({"x": 2}, "y")]),
    ("Return the keys of {0} in sorted order.", "sorted({0})", [("sorted_keys", "d"), ("key_list", "table"), ("keys_in_order", "mapping")], [({"b": 1, "a": 2},), ({},), ({"x": 0},)]),
    ("Return True if {0} is empty.", "not {0}", [("is_empty", "items"), ("empty", "seq"), ("has_nothing", "values")], [([],), ([1],), ("",)]),
    ("Return {0} with every {1} replaced by {2}.", "{0}.replace({1}, {2})", [("replace", "s, old, new"), ("substitute", "text, a, b"), ("swap_text", "word, before, after")], [("aXa", "X", "-"), ("abc", "z", "y"), ("", "a", "b")]),
    ("Return the concatenation of {0} and {1}.", "{0} + {1}", [("concat", "a, b"), ("join_two", "x, y"), ("combine", "first, second")], [([1], [2]), ("a", "b"), ([], [])]),
    ("Return {0} divided by {1}, rounded down.", "{0} // {1}", [("floor_div", "a, b"), ("divide", "x, y"), ("quotient", "m, n")], [(7, 2), (9, 3), (-7, 2)]),
    ("Return the remainder of {0} divided by {1}.", "{0} % {1}", [("remainder", "a, b"), ("modulo", "x, y"), ("mod", "m, n")], [(7, 2), (9, 3), (-7, 2)]),
    ("Return {0} to the power {1}.", "{0} ** {1}", [("power", "a, b"), ("pow_of", "x, y"), ("raise_to", "base, exp")], [(2, 3), (5, 0), (3, 2)]),
    ("Return True if {0} equals {1}.", "{0} == {1}", [("equal", "a, b"), ("equals", "x, y"), ("is_equal", "first, second")], [(1, 1), (1, 2), ("a", "a")]),
]
HELD_OUT_EVERY = 5  # every fifth task (all three namings) is the held-out split

# More arguments per task (by its first naming), for the rows' hidden_tests: never shown, never
# rewarded; GRPO logs the pass rate on them beside the visible tests', so a policy that learns the
# visible asserts by heart (a lookup of their arguments) shows as a gap between the two.
HIDDEN: dict[str, list[tuple]] = {
    "identity": [(0,), ((1, 2),)], "keep_first": [(0, 1), ([], "x")], "keep_second": [(0, 1), ([], "x")],
    "always_true": [], "always_false": [], "empty_list": [], "empty_dict": [], "zero": [], "empty_string": [],
    "to_bool": [([],), ("x",)],
    "add": [(7, 8), (-5, -6)], "subtract": [(0, 9), (-3, -8)], "multiply": [(4, 5), (-3, -3)], "increment": [(99,), (-100,)],
    "decrement": [(-1,), (50,)], "double": [(21,), (-50,)], "square": [(9,), (-11,)], "negate": [(8,), (-9,)],
    "absolute": [(-17,), (5,)], "is_even": [(10,), (7,)], "is_positive": [(100,), (-1,)], "larger": [(7, 9), (0, -1)],
    "smaller": [(7, 9), (0, -1)], "length": [([0, 0, 0, 0],), ("hello",)], "first": [([9, 8],), ("q",)],
    "last": [([9, 8],), ("q",)], "total": [([10, 20],), ([-5],)], "largest": [([0, 9, 4],), ([-7, -3],)],
    "smallest": [([0, 9, 4],), ([-7, -3],)], "sort_items": [([9, -1, 4],), (["b", "a"],)],
    "reverse": [([4, 5],), ("xy",)], "to_list": [((7,),), ("xyz",)], "to_tuple": [([9],), ("xy",)],
    "unique": [([3, 3, 3],), ("xyz",)], "upper": [("mixed Case",), ("x1",)], "lower": [("MiXeD",), ("X1",)],
    "strip": [("   ",), (" x y ",)], "words": [("two  words",), (" lead and trail ",)],
    "join_commas": [(["p", "q", "r"],), ([""],)], "to_string": [(-4,), (True,)], "to_int": [("0",), (-2.5,)],
    "is_none": [(False,), ([],)], "contains": [("z", "xyz"), (0, [])], "count": [("aaa", "a"), ([3, 3, 1], 3)],
    "starts_with": [("python", "py"), ("abc", "abcd")], "ends_with": [("python", "on"), ("abc", "zabc")],
    "repeat": [("ha", 3), ("", 5)], "lookup": [({"k": [1]}, "k"), ({"a": 1}, "A")],
    "sorted_keys": [({"z": 1, "m": 2, "a": 3},), ({"only": 1},)], "is_empty": [({},), ("x",)],
    "replace": [("banana", "a", "o"), ("xx", "x", "")], "concat": [([1, 2], [3]), ("ab", "")],
    "floor_div": [(20, 6), (-9, 4)], "remainder": [(20, 6), (-9, 4)], "power": [(10, 3), (-2, 3)],
    "equal": [([1], [1]), ("a", "b")],
}


def literal(value: object) -> str:
    """repr, but a set's elements in sorted order: a set of strings prints in an order that changes
    with each process's hash seed, and the shipped file must be the same from every build."""
    if isinstance(value, set):
        return "{" + ", ".join(sorted(map(repr, value))) + "}" if value else "set()"
    return repr(value)


def rows() -> list[dict]:
    out = []
    tasks = [("trivial", t) for t in TRIVIAL] + [("described", t) for t in DESCRIBED]
    for t, (level, (doc, expr, namings, cases)) in enumerate(tasks):
        split = "test" if t % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"
        for i, (name, params) in enumerate(namings):
            names = params.split(", ") if params else []
            body = expr.format(*names)
            reference = eval(f"lambda {params}: {body}")  # noqa: S307  our own fixed expressions, never a model's
            tests = [f"assert {name}({', '.join(map(repr, args))}) == {literal(reference(*args))}" for args in cases]
            hidden = [f"assert {name}({', '.join(map(repr, args))}) == {literal(reference(*args))}" for args in HIDDEN[namings[0][0]]]
            explicit = level == "described" and i == 2
            ask = f"Return {body}." if explicit else doc.format(*names)
            prompt = f'def {name}({params}):\n    """{ask}"""\n    return'
            out.append({"task_id": f"basics/{name}", "prompt": prompt, "reference": f" {body}\n", "tests": tests,
                        **({"hidden_tests": hidden} if hidden else {}), "entry_point": name, "split": split, "task": namings[0][0],
                        "level": "explicit" if explicit else level})
    ids = [r["task_id"] for r in out]
    assert len(set(ids)) == len(ids), "task ids must be unique"
    return out


def build() -> None:
    out = DATASETS["python-basics"]
    tmp = out.with_suffix(".tmp")
    data = rows()
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        for row in data:
            f.write((json.dumps(row) + "\n").encode())
    tmp.replace(out)
    held_out = sum(r["split"] == "test" for r in data)
    print(f"wrote {out}: {len(data)} problems, {len(data) - held_out} train, {held_out} held out")


if __name__ == "__main__":
    build()
