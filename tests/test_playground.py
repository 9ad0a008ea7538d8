"""The playground: its parts directly (pool, prompts, votes, leaderboard), then the running app through gradio_client."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from qlcode.data import build as build_data
from qlcode.errors import QlcodeError
from qlcode.train import train
from qlcode.ui.leaderboard import bradley_terry, standings
from qlcode.ui.pool import Pool, Settings
from qlcode.ui.prompts import MAX_PROMPT_CHARS, Prompt, pane_prompt, user_turn
from qlcode.ui.votes import Generation, VoteBook, VoteError

from conftest import REPO, make_recipe, write_jsonl
from test_train import ROWS

GREEDY = Settings(temperature=0, max_new_tokens=6)


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


def _answers(pool, specs, prompt, settings=GREEDY) -> list[str]:
    *_, panes = pool.stream(specs, [prompt] * len(specs), settings)
    assert all(p.done and p.error is None for p in panes), panes
    return [p.text for p in panes]


COMPLETE = Prompt("complete", text="def add(a, b):\n")


def test_two_adapters_share_one_base_and_one_batch_gives_each_row_its_own_adapter(pool, adapters):
    assert pool.choices() == ["base", "adapter:one", "adapter:two"]
    base_bytes = _unique_bytes(pool.model)
    batched = _answers(pool, ["base", "adapter:two", "adapter:one"], COMPLETE)  # the first adapter loads during this call
    adapter_bytes = sum((adapters / n / "adapter_model.safetensors").stat().st_size for n in ("one", "two"))
    grown = _unique_bytes(pool.model) - base_bytes
    assert 0.9 * adapter_bytes <= grown <= 1.2 * adapter_bytes, (grown, adapter_bytes)
    alone = [_answers(pool, [spec], COMPLETE)[0] for spec in ("base", "adapter:two", "adapter:one")]
    assert batched == alone, "a row of the mixed-adapter batch answers as its model does alone"
    assert len(set(alone)) >= 2, "the adapters answer differently from the base"


def test_both_panes_stream_at_the_same_time_with_their_speed(pool):
    chat = pane_prompt("chat", {"text": "Write add."}, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    snapshots = [[(p.tokens, p.done, p.stats()) for p in panes] for panes in pool.stream(["base", "adapter:one"], [COMPLETE, chat],
                                                                                        Settings(temperature=0, max_new_tokens=8))]
    both_going = [(left, right) for left, right in snapshots if left[0] and right[0] and not left[1] and not right[1]]
    assert both_going, "the right pane has tokens before the left one is finished"
    assert all(stats.startswith("generating · first token ") for _, _, stats in both_going[0])
    *_, panes = pool.stream(["base", "adapter:one"], [COMPLETE, chat], Settings(temperature=0, max_new_tokens=8))
    for p in panes:
        assert p.first_token_s > 0 and 0 < p.tokens <= 8 and p.seconds >= p.first_token_s
        assert p.stats().startswith(f"first token {p.first_token_s:.2f} s · {p.tokens} tokens · ")


def test_a_failing_pane_shows_its_error_and_the_other_pane_answers(pool):
    *_, (broken, fine) = pool.stream(["adapter:missing", "base"], [COMPLETE, COMPLETE], GREEDY)
    assert broken.error.startswith("QlcodeError: no finished adapter at") and broken.done
    assert fine.error is None and fine.text


def test_infill_stops_at_eot_and_lays_out_the_prompt_as_the_model_saw_it(pool):
    infill = pane_prompt("infill", {"prefix": "def square(x):\n    return ", "suffix": "\n"}, [])
    (answer,) = _answers(pool, ["base"], infill, Settings(temperature=0, max_new_tokens=8))
    assert isinstance(answer, str)
    assert pool.laid_out("base", infill) == "<PRE>def square(x):\n    return <SUF>\n<MID>"
    assert infill.program("x * x") == "def square(x):\n    return x * x\n"


def test_the_prompt_cut_keeps_the_end_and_says_so():
    text = "a" * 50_000 + "b" * 50_000
    turn, notice = user_turn("complete", text, "", "")
    assert turn["text"] == "b" * MAX_PROMPT_CHARS
    assert notice == ("The prompt was cut to its last 8,000 characters (it had 100,000): "
                      "the model saw only those, and a vote stores only those.")
    turn, notice = user_turn("infill", "", "p" * 9000, "s" * 8000 + "t")
    assert turn == {"prefix": "p" * MAX_PROMPT_CHARS, "suffix": "s" * MAX_PROMPT_CHARS}
    assert notice.startswith("The prefix was cut to its last 8,000 characters (it had 9,000)")
    assert "The suffix was cut to its first 8,000 characters (it had 8,001)" in notice
    assert user_turn("chat", "short", "", "") == ({"text": "short"}, "")


def test_bad_settings_are_refused_with_their_range():
    with pytest.raises(QlcodeError, match=r"^seed must be a whole number from 0 to 4294967295, got 10{30}$"):
        Settings(seed=10**30)
    with pytest.raises(QlcodeError, match="max new tokens must be from 1 to 1024, got 0"):
        Settings(max_new_tokens=0)


def _chat_generation(answers=("```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b): return a - b")) -> Generation:
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    prompts = (pane_prompt("chat", {"text": "Write add."}, history),
               pane_prompt("chat", {"text": "Write add."}, [history[0], {"role": "assistant", "content": "Hey"}]))
    return Generation("chat", ("adapter:one", "base"), prompts, answers)


def test_one_vote_per_generation_with_clean_rows(tmp_path):
    book = VoteBook(tmp_path / "votes")
    with pytest.raises(VoteError, match="nothing to vote on yet: send a prompt first"):
        book.record(None, "left")
    with pytest.raises(VoteError, match="the right answer is empty"):
        book.record(_chat_generation(("x", " ")), "left")
    gen = _chat_generation()
    row = book.record(gen, "left")
    for choice in ("left", "right", "tie"):
        with pytest.raises(VoteError, match="this generation already has a vote"):
            book.record(gen, choice)
    assert VoteBook(tmp_path / "votes").voted == {gen.id}, "a restarted app still refuses a second vote"
    lines = (tmp_path / "votes" / "chat.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == row
    assert row["prompt"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                             {"role": "user", "content": "Write add."}]
    assert row["chosen"] == [{"role": "assistant", "content": gen.answers[0]}]
    assert row["rejected"] == [{"role": "assistant", "content": gen.answers[1]}]
    assert row["rejected_prompt"][1] == {"role": "assistant", "content": "Hey"}
    assert (row["chosen_model"], row["rejected_model"], row["mode"], row["generation"]) == ("adapter:one", "base", "chat", gen.id)
    complete = Generation("complete", ("base", "adapter:one"), (COMPLETE, COMPLETE), ("    return a - b\n", "    return a + b\n"))
    book.record(complete, "right")
    tie = Generation("complete", ("base", "adapter:one"), (COMPLETE, COMPLETE), ("    pass\n", "    return 1\n"))
    book.record(tie, "tie")
    row = json.loads((tmp_path / "votes" / "complete.jsonl").read_text())
    assert {k: row[k] for k in ("prompt", "chosen", "rejected", "chosen_model", "rejected_model")} == {
        "prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    return a - b\n",
        "chosen_model": "adapter:one", "rejected_model": "base"}
    assert json.loads((tmp_path / "votes" / "ties.jsonl").read_text())["models"] == ["base", "adapter:one"]
    assert len(list(book.rows())) == 3


def test_complete_and_infill_votes_load_as_dpo_data(tmp_path):
    book = VoteBook(tmp_path / "votes")
    for i in range(4):
        book.record(Generation("complete", ("base", "adapter:one"), (COMPLETE, COMPLETE), (f"    return a - {i}\n", "    return a + b\n")), "right")
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", book.file("complete"), fmt="preference",
                         train={"method": "dpo", "max_steps": 1}, data={"template": "completion", "validation": 0})
    ds, _ = build_data(recipe.data)
    assert sorted(ds, key=lambda r: r["rejected"]) == [
        {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": f"    return a - {i}\n"} for i in range(4)]
    assert train(recipe).steps == 1
    infill = pane_prompt("infill", {"prefix": "def sq(x):\n    return ", "suffix": "\n"}, [])
    book.record(Generation("infill", ("base", "adapter:one"), (infill, infill), ("x * x", "x + x"),
                           prompt_text="<PRE>def sq(x):\n    return <SUF>\n<MID>"), "left")
    recipe = make_recipe(tmp_path / "infill", "builtin:micro-codellama", book.file("infill"), fmt="preference",
                         train={"method": "dpo"}, data={"template": "raw", "validation": 0})
    assert list(build_data(recipe.data)[0]) == [{"prompt": "<PRE>def sq(x):\n    return <SUF>\n<MID>", "chosen": "x * x", "rejected": "x + x"}]


def test_chat_votes_load_as_conversational_dpo_data(tmp_path):
    book = VoteBook(tmp_path / "votes")
    book.record(_chat_generation(), "left")
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", book.file("chat"), fmt="preference",
                         train={"method": "dpo", "max_steps": 1}, data={"template": "codellama-instruct", "validation": 0})
    ds, _ = build_data(recipe.data)
    assert ds[0]["prompt"][-1] == {"role": "user", "content": "Write add."}
    assert ds[0]["chosen"] == [{"role": "assistant", "content": _chat_generation().answers[0]}]
    assert train(recipe).steps == 1  # the vote file trains as it is, no cleaning
    kto = make_recipe(tmp_path / "kto", "builtin:micro-codellama", book.file("chat"), fmt="preference",
                      train={"method": "kto", "max_steps": 1, "micro_batch_size": 2},
                      data={"template": "codellama-instruct", "validation": 0})
    assert train(kto).steps == 1  # and as KTO's unpaired rows: the chosen answer desirable, the other not


def _votes(*pairs) -> list[dict]:
    return [{"models": [a, b]} if winner == "tie" else {"chosen_model": a if winner == a else b,
                                                         "rejected_model": b if winner == a else a}
            for a, b, winner in pairs]


def test_bradley_terry_against_a_hand_computed_case():
    """A beats B three times, B beats A once: p_A / p_B = 3, so A leads by 400 log10(3) = 190.85 Elo."""
    table = standings(_votes(*[("A", "B", "A")] * 3, ("A", "B", "B")), prior=0, resamples=0)
    assert [(s.model, s.votes, s.wins, s.losses, s.ties, s.win_rate) for s in table] == [("A", 4, 3, 1, 0, 0.75), ("B", 4, 1, 3, 0, 0.25)]
    assert table[0].score - table[1].score == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert table[0].score + table[1].score == pytest.approx(2000, abs=1e-6)
    # a tie is half a win for each side: 2 wins and a tie each way is even
    even = standings(_votes(("A", "B", "A"), ("A", "B", "B"), ("A", "B", "tie")), prior=0, resamples=0)
    assert [s.score for s in even] == pytest.approx([1000, 1000]) and even[0].ties == 1


def test_bradley_terry_solves_the_likelihood_equations_and_stays_finite_for_an_undefeated_model():
    points = np.array([[0, 2, 3], [1, 0, 1.5], [1, 0.5, 0]])  # points[i, j]: what i took from j
    score = bradley_terry(points, prior=0)
    p = 10 ** ((score - 1000) / 400)
    played = points + points.T
    expected = (played * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    assert expected == pytest.approx(points.sum(axis=1), abs=1e-8), "each model's expected points equal its points"
    table = standings(_votes(*[("A", "B", "A")] * 5, ("A", "A", "A")))
    assert table[0].model == "A" and math.isfinite(table[0].score) and table[0].votes == 5, "A against itself is not counted"
    assert table[0].low <= table[0].score <= table[0].high and table[0].low > table[1].high - 400


def test_import_qlcode_loads_no_ui():
    code = "import sys, qlcode, qlcode.cli; print(sorted(m for m in ('gradio', 'qlcode.ui.app') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_play_refuses_bad_bits_with_a_message(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "play", "--bits", "3"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (res.returncode, res.stderr.strip()) == (2, "error: --bits must be 4, 8 or none, got '3'")


SEND = dict(mode="chat", message="Write add.", prefix="", suffix="", asserts="", left_model="base", right_model="adapter:one",
            blind=False, temperature=0.0, top_p=0.95, max_new_tokens=6, seed=0)


def _text(message: dict) -> str:
    return "".join(part["text"] for part in message["content"])


def test_the_running_app_through_gradio_client(pool, tmp_path):
    from gradio_client import Client

    from qlcode.ui.app import build

    votes = tmp_path / "votes"
    demo = build(pool, votes, "base", "adapter:one")
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert demo.server_name == "127.0.0.1"
        client = Client(demo.local_url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert sorted(api) == ["/leaderboard", "/new_chat", "/run_tests", "/send", "/vote_left", "/vote_right", "/vote_tie"]
        assert [p["parameter_name"] for p in api["/send"]["parameters"]] == list(SEND)
        assert [p["parameter_name"] for p in api["/run_tests"]["parameters"]] == ["asserts"]
        assert all(not p["parameter_name"].startswith("param_") for e in api.values() for p in e["parameters"])

        with pytest.raises(Exception, match="nothing to vote on yet: send a prompt first"):
            client.predict(False, api_name="/vote_left")
        assert client.predict("assert True", api_name="/run_tests") == ("tests: no answer yet (send a prompt first)",) * 2
        with pytest.raises(Exception, match="seed must be a whole number from 0 to 4294967295"):
            client.predict(**{**SEND, "seed": 10**30}, api_name="/send")

        client.predict(**SEND, api_name="/send")
        left, right, l_stats, r_stats, l_tests, r_tests, notice = client.predict(**{**SEND, "message": "And sub?"}, api_name="/send")
        for pane in (left, right):
            assert [m["role"] for m in pane["value"]] == ["user", "assistant"] * 2, "turn 2 follows turn 1 in the transcript"
            assert [_text(m) for m in pane["value"][::2]] == ["Write add.", "And sub?"]
        assert l_stats.startswith("first token ") and r_stats.startswith("first token ") and notice == ""
        status = client.predict(False, api_name="/vote_right")[0]
        assert status == f"Saved the right answer to {votes / 'chat.jsonl'}."
        with pytest.raises(Exception, match="this generation already has a vote"):
            client.predict(False, api_name="/vote_left")
        row = json.loads((votes / "chat.jsonl").read_text())
        assert [m["content"] for m in row["prompt"]] == ["Write add.", _text(right["value"][1]), "And sub?"]
        assert row["chosen"] == [{"role": "assistant", "content": _text(right["value"][3])}]
        board = client.predict(api_name="/leaderboard")
        assert [r[:5] for r in board["data"]] == [["adapter:one", 1, 1, 0, 0], ["base", 1, 0, 1, 0]]

        *_, l_tests, r_tests, notice = client.predict(**{**SEND, "mode": "complete", "message": "x" * 9000 + "def f():\n",
                                                         "asserts": "assert f() is None"}, api_name="/send")
        assert notice.startswith("The prompt was cut to its last 8,000 characters (it had 9,009)")
        assert l_tests.startswith("tests: ") and l_tests != "tests: -"
        client.predict(False, api_name="/vote_left")
        recipe = make_recipe(tmp_path, "builtin:micro-codellama", votes / "complete.jsonl", fmt="preference",
                             train={"method": "dpo"}, data={"template": "completion", "validation": 0})
        (row,) = build_data(recipe.data)[0]
        assert row["prompt"] == ("x" * 9000 + "def f():\n")[-MAX_PROMPT_CHARS:], "a UI vote loads as DPO data, prompt as the model saw it"
        assert row["chosen"] and row["rejected"]

        def one(i: int):
            return client.predict(**{**SEND, "mode": "complete", "message": f"def f{i}():\n", "max_new_tokens": 3}, api_name="/send")
        with ThreadPoolExecutor(20) as ex:
            results = list(ex.map(one, range(20)))
        assert len(results) == 20
        for i, (left, right, *_) in enumerate(results):
            for pane in (left, right):
                assert _text(pane["value"][0]) == f"```python\ndef f{i}():\n```" and len(pane["value"]) == 2
    finally:
        demo.close()
