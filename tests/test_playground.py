"""The playground: its logic directly, then the running app through gradio_client."""

from __future__ import annotations

import json

import pytest

from qlcode.playground import Pool, Settings, record_vote, run_answer
from qlcode.train import train

from conftest import make_recipe, write_jsonl
from test_train import ROWS


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two small adapters on the micro model, as qlcode train writes them."""
    root = tmp_path_factory.mktemp("adapters")
    rows = write_jsonl(root / "rows.jsonl", ROWS)
    for name, lr in (("one", 5e-3), ("two", 2e-2)):
        recipe = make_recipe(root / f"r-{name}", "builtin:micro-codellama", rows, train={"max_steps": 2, "learning_rate": lr},
                             data={"validation": 0}, output={"name": name, "dir": str(root / "adapters" / name)})
        train(recipe)
    return root / "adapters"


@pytest.fixture(scope="module")
def pool(adapters):
    return Pool("builtin:micro-codellama", bits=4, adapters=adapters)


def _unique_bytes(model) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def test_two_adapters_share_one_base(pool, adapters):
    assert pool.choices() == ["base", "adapter:one", "adapter:two"]
    base_bytes = _unique_bytes(pool.model)
    outs = {spec: list(pool.stream(spec, "complete", "def add(a, b):\n", Settings(temperature=0, max_new_tokens=6)))[-1]
            for spec in ("adapter:one", "adapter:two", "base")}
    adapter_bytes = sum((adapters / n / "adapter_model.safetensors").stat().st_size for n in ("one", "two"))
    grown = _unique_bytes(pool.model) - base_bytes
    assert 0.9 * adapter_bytes <= grown <= 1.2 * adapter_bytes, (grown, adapter_bytes)
    assert len(set(outs.values())) >= 2, "the adapters answer differently from the base"


def test_modes(pool):
    s = Settings(temperature=0, max_new_tokens=8)
    chat = list(pool.stream("adapter:one", "chat", "Write add.", s, history=[("Hi", "Hello")]))
    infill = list(pool.stream("base", "infill", settings=s, prefix="def square(x):\n    return ", suffix="\n\nprint(square(2))\n"))
    assert chat and infill and isinstance(infill[-1], str)
    with pytest.raises(Exception):
        list(pool.stream("adapter:nope", "complete", "x", s))


def test_run_answer_reports_pass_and_fail():
    answer = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert run_answer(answer, "assert add(1, 2) == 3").outcome == "passed"
    r = run_answer(answer, "assert add(1, 2) == 4")
    assert (r.outcome, r.error_type) == ("failed", "AssertionError")


def test_a_vote_is_a_row_a_dpo_recipe_trains_on(tmp_path):
    votes = tmp_path / "votes.jsonl"
    record_vote(votes, "def add(a, b):\n", ("base", "    return a - b\n"), ("adapter:one", "    return a + b\n"), "right")
    record_vote(votes, "def f():\n", ("base", "    pass\n"), ("adapter:one", "    return 1\n"), "tie")
    row = json.loads(votes.read_text())
    assert row == {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    return a - b\n",
                   "chosen_model": "adapter:one", "rejected_model": "base"}
    assert json.loads(votes.with_suffix(".ties.jsonl").read_text())["models"] == ["base", "adapter:one"]
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", votes, fmt="preference",
                         train={"method": "dpo", "max_steps": 1}, data={"template": "completion", "validation": 0})
    assert train(recipe).steps == 1


def test_the_running_app_through_gradio_client(pool, tmp_path):
    from gradio_client import Client

    from app.playground import build

    votes = tmp_path / "votes.jsonl"
    demo = build(pool, votes, "base", "adapter:one")
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.server_name == "127.0.0.1"
        client = Client(demo.local_url, verbose=False)
        left, right, *_ = client.predict("complete", "base", "adapter:one", "def add(a, b):\n", "", "", 0.0, 0.95, 8, 0, [], [],
                                         api_name="/send")
        assert left and right
        left_i, right_i, *_ = client.predict("infill", "base", "adapter:one", "", "def sq(x):\n    return ", "\n", 0.0, 0.95, 8, 0,
                                             [], [], api_name="/send")
        assert isinstance(left_i, str) and isinstance(right_i, str)
        broken = client.predict("complete", "adapter:missing", "base", "x = ", "", "", 0.0, 0.95, 4, 0, [], [], api_name="/send")
        assert broken[0].startswith("error: ") and broken[1], "an error shows in its pane and the other pane still answers"
        ok, bad = client.predict("complete", "", "", "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n",
                                 "assert add(2, 2) == 4", api_name="/run_tests")
        assert (ok, bad) == ("passed", "failed: AssertionError")
        status = client.predict("complete", "def add(a, b):\n", "", "", "base", "adapter:one", "bad", "good", api_name="/vote_right")
        assert "saved" in status
        assert json.loads(votes.read_text()) == {"prompt": "def add(a, b):\n", "chosen": "good", "rejected": "bad",
                                                 "chosen_model": "adapter:one", "rejected_model": "base"}
    finally:
        demo.close()
