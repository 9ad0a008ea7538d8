"""The playground: its parts directly (pool, prompts, votes, leaderboard), then the running app through gradio_client."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

from qlcode.data import build as build_data
from qlcode.errors import QlcodeError
from qlcode.train import train
from qlcode.errors import DataError
from qlcode.ui.access import exposure, logins
from qlcode.ui.leaderboard import BOOTSTRAP, Board, Leaderboard, bradley_terry, standings
from qlcode.ui.pool import Pool, Settings
from qlcode.ui.prompts import MAX_PROMPT_CHARS, Prompt, pane_prompt, user_turn
from qlcode.ui.transcript import fence, literal
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
        assert p.first_token_s > 0 and 0 < p.tokens <= 8 and p.seconds >= p.first_token_s >= p.queued_s >= 0
        assert re.fullmatch(rf"first token {p.first_token_s:.2f} s( \({p.queued_s:.2f} s of it waiting for the model\))? · "
                            rf"{p.tokens} tokens · [0-9.]+ tokens/s", p.stats())


@contextmanager
def base_busy(pool, seconds: float) -> Iterator[None]:
    """The base model's lock held by another thread for `seconds`, from the moment the block starts."""
    held = threading.Event()

    def hold():
        with pool.locks["base"]:
            held.set()
            time.sleep(seconds)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        yield
    finally:
        holder.join()


def test_the_first_token_time_counts_the_wait_for_the_model(pool):
    with base_busy(pool, 1.5):
        *_, (pane,) = pool.stream(["base"], [COMPLETE], GREEDY)
    assert pane.queued_s >= 1.5 and pane.first_token_s >= pane.queued_s, "the 1.5 s the model was busy count"
    assert f"first token {pane.first_token_s:.2f} s ({pane.queued_s:.2f} s of it waiting for the model) · " in pane.stats()


def test_stop_ends_the_generation_where_it_is(pool):
    long = Settings(temperature=0, max_new_tokens=40)
    *_, (whole,) = pool.stream(["base"], [COMPLETE], long)
    assert whole.tokens == 40, "greedy, this prompt runs to the token limit"
    stop = threading.Event()
    stop.set()  # checked after each token: the first one comes, then generation ends
    *_, (stopped,) = pool.stream(["base"], [COMPLETE], long, stop=stop)
    assert stopped.done and stopped.tokens == 1 and whole.text.startswith(stopped.text)
    stream = pool.stream(["base"], [COMPLETE], long, stop=(abandoned := threading.Event()))
    next(stream)
    stream.close()  # a request that goes away (cancelled) stops its generation
    assert abandoned.is_set()
    *_, (again,) = pool.stream(["base"], [COMPLETE], long)
    assert again.text == whole.text, "the model is free and answers as before"


def test_the_pool_serves_only_its_choices(pool, adapters):
    loaded = set(pool.others)
    for spec in (f"adapter:{adapters / 'one'}", "adapter:../adapters/one", str(adapters / "one"), "adapter:missing",
                 "builtin:micro-codellama"):
        with pytest.raises(QlcodeError, match=rf"^{re.escape(repr(spec))} is not a model of this playground; "
                                              r"pick one of: base, adapter:one, adapter:two$"):
            pool.target(spec)
    started = time.perf_counter()
    with pytest.raises(QlcodeError, match=r"^'xxxx.*x\.\.\. \(10,000,000 characters\)' is not a model of this playground"):
        pool.target("x" * 10_000_000)
    assert time.perf_counter() - started < 5, "refused without holding anything (a generous bound for a loaded machine)"
    assert set(pool.others) == loaded, "nothing was loaded"
    *_, (broken, fine) = pool.stream(["adapter:missing", "base"], [COMPLETE, COMPLETE], GREEDY)
    assert broken.error.startswith("QlcodeError: 'adapter:missing' is not a model of this playground") and broken.done
    assert fine.error is None and fine.text, "the other pane still answers"
    named = Pool("builtin:micro-codellama", bits=4, adapters=adapters, models=("builtin:micro-codellama",))
    assert named.choices() == ["base", "adapter:one", "adapter:two", "builtin:micro-codellama"]


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


def _first_turn(answers=("```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b): return a - b")) -> Generation:
    prompt = pane_prompt("chat", {"text": "Write add."}, [{"role": "system", "content": "Answer in Python."}])
    return Generation("chat", ("adapter:one", "base"), (prompt, prompt), answers)


def test_chat_votes_load_as_conversational_dpo_data_each_answer_after_its_own_conversation(tmp_path, capsys):
    book = VoteBook(tmp_path / "votes")
    for i in range(2):
        book.record(_chat_generation(), "left")  # a later turn: the panes' earlier answers differ
    book.record(_first_turn(), "left")
    assert "rejected_prompt" in json.loads((tmp_path / "votes" / "chat.jsonl").read_text().splitlines()[0])
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", book.file("chat"), fmt="preference",
                         train={"method": "dpo", "max_steps": 1}, data={"template": "codellama-instruct", "validation": 0})
    ds, _ = build_data(recipe.data)
    assert "data.datasets[0]: 2 of 3 rows of " in capsys.readouterr().err.replace("\n", "")
    assert len(ds) == 1, "the rejected answers that followed another conversation are left out"
    assert ds[0]["prompt"] == [{"role": "system", "content": "Answer in Python."}, {"role": "user", "content": "Write add."}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": _first_turn().answers[0]}]
    assert ds[0]["rejected"] == [{"role": "assistant", "content": _first_turn().answers[1]}]
    assert train(recipe).steps == 1  # the vote file trains as it is, no cleaning
    only_later = VoteBook(tmp_path / "later")
    only_later.record(_chat_generation(), "right")
    recipe = make_recipe(tmp_path / "later", "builtin:micro-codellama", only_later.file("chat"), fmt="preference",
                         train={"method": "dpo"}, data={"template": "codellama-instruct", "validation": 0})
    with pytest.raises(DataError, match=r"data.datasets\[0\]: 1 of 1 rows of .* have a rejected answer that followed another "
                                        r"conversation .*: none is left to train on, since DPO and ORPO train both answers after "
                                        r"one prompt; .* or train KTO \(train.method: kto\)"):
        build_data(recipe.data)


def test_chat_votes_train_kto_with_each_answer_after_its_own_conversation(tmp_path, capsys):
    """KTO's rows are unpaired: a later-turn vote's rejected answer keeps the conversation it followed."""
    from typer.testing import CliRunner

    from qlcode.cli import app

    book = VoteBook(tmp_path / "votes")
    book.record(_chat_generation(), "left")  # a later turn: the panes' earlier answers differ
    book.record(_chat_generation(), "right")
    book.record(_first_turn(), "left")
    votes = [json.loads(line) for line in book.file("chat").read_text().splitlines()]
    kto = make_recipe(tmp_path, "builtin:micro-codellama", book.file("chat"), fmt="preference",
                      train={"method": "kto", "max_steps": 1, "micro_batch_size": 2},
                      data={"template": "codellama-instruct", "validation": 0})
    rows, _ = build_data(kto.data, unpaired=True)
    assert "have a rejected answer that followed another conversation" not in capsys.readouterr().err  # none left out
    def as_set(ds) -> set[tuple]:
        return {(json.dumps(r["prompt"]), r["completion"][0]["content"], r["label"]) for r in ds}

    per_vote = [{(json.dumps(v["prompt"]), v["chosen"][0]["content"], True),
                 (json.dumps(v.get("rejected_prompt", v["prompt"])), v["rejected"][0]["content"], False)} for v in votes]
    assert len(rows) == 6 and as_set(rows) == set().union(*per_vote)
    assert "rejected_prompt" in votes[0] and votes[0]["rejected_prompt"] != votes[0]["prompt"]
    assert (json.dumps(votes[0]["prompt"]), votes[0]["rejected"][0]["content"], False) not in as_set(rows)
    # the validation split is made by votes: both answers of one vote stay on one side
    train_rows, held = build_data(kto.data.model_copy(update={"validation": 1}), unpaired=True)
    assert (len(train_rows), len(held)) == (4, 2) and as_set(held) in per_vote
    # qlcode train and recipes validate take the method's unpairing: a file of later-turn votes alone trains KTO
    only_later = VoteBook(tmp_path / "later")
    only_later.record(_chat_generation(), "right")
    only_later.record(_chat_generation(), "left")
    later = make_recipe(tmp_path / "later", "builtin:micro-codellama", only_later.file("chat"), fmt="preference",
                        train={"method": "kto", "max_steps": 1, "micro_batch_size": 2},
                        data={"template": "codellama-instruct", "validation": 0})
    res = CliRunner().invoke(app, ["recipes", "validate", str(tmp_path / "later" / "recipe.yaml")])
    assert res.exit_code == 0, res.output
    assert train(later).steps == 1


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


SEND = dict(mode="chat", message="Write add.", prefix="", suffix="", system="", asserts="", left_model="base",
            right_model="adapter:one", blind=False, temperature=0.0, top_p=0.95, max_new_tokens=6, seed=0)


def _text(message: dict) -> str:
    return "".join(part["text"] for part in message["content"])


def _source(markdown: str) -> str:
    """The text a chat pane shows as written (qlcode.ui.transcript.literal undone)."""
    return re.sub(r"\\([\\`*_<\[\]|~$#>+=.)-])", r"\1", markdown).replace("&nbsp;", " ").replace("&amp;", "&")


@pytest.fixture
def app(pool, tmp_path):
    """(gradio_client Client, votes directory) on a fresh app served on 127.0.0.1."""
    from gradio_client import Client

    from qlcode.ui.app import build, serve

    demo = serve(build(pool, tmp_path / "votes", "base", "adapter:one"), server_name="127.0.0.1", server_port=None,
                 prevent_thread_lock=True, quiet=True)
    assert demo.server_name == "127.0.0.1"
    yield Client(demo.local_url, verbose=False), tmp_path / "votes"
    demo.close()


def test_the_running_app_through_gradio_client(app, tmp_path):
    client, votes = app
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == ["/leaderboard", "/new_chat", "/regenerate", "/run_tests", "/send", "/stop", "/vote_left",
                           "/vote_right", "/vote_tie"]
    assert [p["parameter_name"] for p in api["/send"]["parameters"]] == list(SEND)
    assert [p["parameter_name"] for p in api["/run_tests"]["parameters"]] == ["asserts"]
    assert all(not p["parameter_name"].startswith("param_") for e in api.values() for p in e["parameters"])

    with pytest.raises(Exception, match="nothing to vote on yet: send a prompt first"):
        client.predict(api_name="/vote_left")
    assert client.predict("assert True", api_name="/run_tests") == ("tests: no answer yet (send a prompt first)",) * 2
    with pytest.raises(Exception, match="seed must be a whole number from 0 to 4294967295"):
        client.predict(**{**SEND, "seed": 10**30}, api_name="/send")
    with pytest.raises(Exception, match="^seed must be a whole number from 0 to 4294967295, got abc$"):
        client.predict(**{**SEND, "seed": "abc"}, api_name="/send")

    client.predict(**SEND, api_name="/send")
    left, right, l_stats, r_stats, l_tests, r_tests, notice, _, message = client.predict(**{**SEND, "message": "And sub?"},
                                                                                         api_name="/send")
    assert message == "", "a chat send clears the message box"
    for pane in (left, right):
        assert [m["role"] for m in pane["value"]] == ["user", "assistant"] * 2, "turn 2 follows turn 1 in the transcript"
        assert [_text(m) for m in pane["value"][::2]] == ["Write add.", "And sub?"]
    assert l_stats.startswith("first token ") and r_stats.startswith("first token ") and notice == ""
    status = client.predict(api_name="/vote_right")[0]
    assert status == f"Saved the right answer to {votes / 'chat.jsonl'}."
    with pytest.raises(Exception, match="this generation already has a vote"):
        client.predict(api_name="/vote_left")
    row = json.loads((votes / "chat.jsonl").read_text())
    assert [m["content"] for m in row["prompt"]] == ["Write add.", _source(_text(right["value"][1])), "And sub?"]
    assert row["chosen"] == [{"role": "assistant", "content": _source(_text(right["value"][3]))}]
    blind, named = client.predict(api_name="/leaderboard")
    assert blind["data"] == [], "no blind vote yet"
    assert [r[:5] for r in named["data"]] == [["adapter:one", 1, 1, 0, 0], ["base", 1, 0, 1, 0]]

    # adapter:two (trained at the higher rate) answers unlike the base here: a pair of equal answers teaches nothing
    # and the data pipeline refuses a file of only such rows
    *_, l_tests, r_tests, notice, _, message = client.predict(**{**SEND, "mode": "complete", "message": "x" * 9000 + "def f():\n",
                                                                 "right_model": "adapter:two", "max_new_tokens": 16,
                                                                 "asserts": "assert f() is None"}, api_name="/send")
    assert message == {"__type__": "update"}, "complete mode leaves its text in the box (Gradio's no-change update)"
    assert notice.startswith("The prompt was cut to its last 8,000 characters (it had 9,009)")
    assert l_tests.startswith("tests: ") and l_tests != "tests: -"
    client.predict(api_name="/vote_left")
    recipe = make_recipe(tmp_path, "builtin:micro-codellama", votes / "complete.jsonl", fmt="preference",
                         train={"method": "dpo"}, data={"template": "completion", "validation": 0})
    (row,) = build_data(recipe.data)[0]
    assert row["prompt"] == ("x" * 9000 + "def f():\n")[-MAX_PROMPT_CHARS:], "a UI vote loads as DPO data, prompt as the model saw it"
    assert row["chosen"] and row["rejected"] and row["chosen"] != row["rejected"]

    def one(i: int):
        return client.predict(**{**SEND, "mode": "complete", "message": f"def f{i}():\n", "max_new_tokens": 3}, api_name="/send")
    with ThreadPoolExecutor(20) as ex:
        results = list(ex.map(one, range(20)))
    assert len(results) == 20
    for i, (left, right, *_) in enumerate(results):
        for pane in (left, right):
            assert _text(pane["value"][0]) == f"```python\ndef f{i}():\n```" and len(pane["value"]) == 2


def _first_token(stats: str) -> float:
    return float(re.match(r"first token ([0-9.]+) s", stats).group(1))


def test_only_the_pools_models_blind_draws_and_locks_regenerate_and_the_system_prompt(app, pool):
    client, votes = app
    for field, spec in (("right_model", "adapter:/tmp/elsewhere"), ("left_model", "./base"), ("right_model", "x" * 100_000)):
        with pytest.raises(Exception, match="is not in the list of choices"):
            client.predict(**{**SEND, field: spec}, api_name="/send")
    assert not list(votes.glob("*.jsonl")) and set(pool.others) <= {"builtin:micro-codellama"}, "nothing loaded, nothing stored"

    with pytest.raises(Exception, match=r"blind mode samples: set a temperature above 0"):
        client.predict(**{**SEND, "blind": True}, api_name="/send")
    blind = {**SEND, "blind": True, "temperature": 0.7, "left_model": "base", "right_model": "base"}
    left, right, *_ = client.predict(**blind, api_name="/send")
    assert (left["label"], right["label"]) == ("model A (hidden until you vote)", "model B (hidden until you vote)")
    left, right, *_ = client.predict(**{**blind, "message": "And sub?"}, api_name="/send")
    assert len(left["value"]) == 4 and right["label"] == "model B (hidden until you vote)", "turn 2 of the same hidden pair"
    status, left_label, right_label = client.predict(api_name="/vote_tie")
    a, b = left_label["label"].removeprefix("model A: "), right_label["label"].removeprefix("model B: ")
    assert a != b and {a, b} <= {"base", "adapter:one", "adapter:two"}, "two different models drawn from the pool"
    assert status.endswith(f"Model A was **{a}**, model B **{b}**. This blind conversation is over: New chat starts another.")
    row = json.loads((votes / "ties.jsonl").read_text())
    assert (row["models"], row["blind"]) == ([a, b], True)
    for api_name, args in (("/send", {**blind, "message": "And mul?"}), ("/regenerate", {})):
        with pytest.raises(Exception, match="this blind conversation is over: its models are revealed; press New chat"):
            client.predict(**{**{k: blind[k] for k in ("asserts", "temperature", "top_p", "max_new_tokens", "seed")}, **args}
                           if api_name == "/regenerate" else args, api_name=api_name)
    client.predict(True, "base", "base", api_name="/new_chat")
    left, right, *_ = client.predict(**blind, api_name="/send")
    assert len(left["value"]) == 2 and left["label"] == "model A (hidden until you vote)", "a new blind conversation"

    client.predict(False, "base", "adapter:one", api_name="/new_chat")
    system = "Answer in Python only."
    client.predict(**{**SEND, "system": system, "max_new_tokens": 4}, api_name="/send")
    first, *_ = client.predict(**{**SEND, "system": system, "message": "And sub?", "max_new_tokens": 4}, api_name="/send")
    *outputs, seed = client.predict("", 0.0, 0.95, 4, 41, api_name="/regenerate")
    again = outputs[0]
    assert seed == 42, "Regenerate uses the next seed"
    assert [_text(m) for m in again["value"][::2]] == ["Write add.", "And sub?"], "the last turn was replaced, not added"
    assert _text(again["value"][1]) == _text(first["value"][1]), "the earlier turn stays"
    client.predict(api_name="/vote_left")
    row = json.loads((votes / "chat.jsonl").read_text().splitlines()[-1])
    assert row["prompt"][0] == {"role": "system", "content": system} and row["prompt"][-1]["content"] == "And sub?"
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"], "one answer per turn, the regenerated one"
    blind_board, named_board = client.predict(api_name="/leaderboard")
    assert sorted(r[0] for r in blind_board["data"]) == sorted([a, b]) and [r[4] for r in blind_board["data"]] == [1, 1]
    assert sorted(r[0] for r in named_board["data"]) == ["adapter:one", "base"], "votes with names shown are kept apart"


def test_the_first_token_time_counts_the_wait_in_the_queue(app, pool):
    """Generations run one at a time: one user's request waits for the model (held here for 3 s), the
    other's waits in Gradio's queue behind it; both waits count in the first-token time (without the
    queue's, the second would report a fraction of a second)."""
    from gradio_client import Client

    client, _ = app
    users = [Client(client.src, verbose=False) for _ in range(2)]
    with base_busy(pool, 3):
        jobs = [user.submit(**{**SEND, "left_model": "base", "right_model": "base", "message": f"Write f{i}."}, api_name="/send")
                for i, user in enumerate(users)]
        results = [job.result() for job in jobs]
    for left, right, l_stats, r_stats, *_ in results:
        assert _first_token(l_stats) >= 2 and _first_token(r_stats) >= 2, (l_stats, r_stats)  # 1 s of margin for the submits
        assert "s of it waiting for the model" in l_stats


def test_stop_through_the_api_keeps_what_was_written(app):
    client, _ = app
    job = client.submit(**{**SEND, "mode": "complete", "message": "x = [", "max_new_tokens": 1024, "right_model": "base"},
                        api_name="/send")
    deadline = time.monotonic() + 120
    while not any(isinstance(out, tuple) and out[2].startswith("generating") for out in job.outputs()):
        assert time.monotonic() < deadline, "the generation did not start"
        time.sleep(0.05)
    client.predict(api_name="/stop")
    left, right, l_stats, _, _, _, notice, *_ = job.result()
    tokens = int(re.search(r"· (\d+) tokens ·", l_stats).group(1))
    assert tokens < 1024 and notice == "Stopped: the answers end where you stopped them."
    assert _text(left["value"][1]).startswith("```python\nx = [")


def test_a_login_is_required_when_auth_is_given(pool, tmp_path):
    from gradio_client import Client

    from qlcode.ui.app import build, serve

    demo = serve(build(pool, tmp_path / "votes", "base", "adapter:one"), server_name="127.0.0.1", server_port=None,
                 prevent_thread_lock=True, quiet=True, auth=[("ada", "s3cret")])
    try:
        with pytest.raises(Exception):
            Client(demo.local_url, verbose=False).predict(**SEND, api_name="/send")
        with pytest.raises(Exception):
            Client(demo.local_url, verbose=False, auth=("ada", "wrong")).predict(**SEND, api_name="/send")
        left, *_ = Client(demo.local_url, verbose=False, auth=("ada", "s3cret")).predict(**SEND, api_name="/send")
        assert len(left["value"]) == 2
    finally:
        demo.close()


def test_exposure_is_warned_about_and_logins_are_read(tmp_path):
    votes = tmp_path / "votes"
    assert exposure("127.0.0.1", False, None, votes) is None and exposure("localhost", False, None, votes) is None
    assert exposure("::1", False, None, votes) is None
    assert exposure("0.0.0.0", False, None, votes) == (
        f"warning: it listens on 0.0.0.0, beyond this machine, with no login: anyone who reaches it can generate with the "
        f"models and vote, writing training data to {votes}. Require a login with --auth FILE (one USER:PASSWORD line per login).")
    assert exposure("127.0.0.1", True, None, votes).startswith("warning: --share opens a public link to it, with no login")
    assert exposure("0.0.0.0", True, [("a", "b")], votes) == (
        "note: it listens on 0.0.0.0, beyond this machine and --share opens a public link to it; a login is required (1 user).")
    assert logins("# team\nada:s3cret\n\nbob:pa:ss\n", "f") == [("ada", "s3cret"), ("bob", "pa:ss")]
    with pytest.raises(QlcodeError, match=r"^f line 2: expected USER:PASSWORD \(a user name, a colon, a password\)$"):
        logins("ada:x\nbob\n", "f")
    with pytest.raises(QlcodeError, match=r"^f: no USER:PASSWORD line; write one login per line$"):
        logins("# nobody\n", "f")


def test_play_refuses_a_missing_auth_file_before_loading(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "play", "--auth", "nope.txt"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (res.returncode, res.stderr.strip()) == (2, "error: --auth nope.txt: no such file; write one USER:PASSWORD line per login in it")


def test_the_leaderboard_counts_blind_votes_apart_and_fits_only_when_read_after_new_votes():
    rng = np.random.default_rng(0)
    models = ["base", "adapter:a", "adapter:b"]
    rows = []
    for i in range(500):
        a, b = rng.choice(models, 2, replace=False)
        rows.append({"chosen_model": str(a), "rejected_model": str(b), "blind": bool(i % 2)})
    board = Leaderboard()
    for row in rows:  # a vote, then the table read, 500 times: what the app did on every vote
        board.add(row)
        blind, named = board.standings()
    solves = board.blind.solves + board.named.solves
    # each read after a new vote: one fit and one batched bootstrap; fitting every resample on its own took 1 + 200
    assert solves == 2 * 500 and 500 * (1 + BOOTSTRAP) / solves > 100
    board.standings()
    assert board.blind.solves + board.named.solves == solves, "no new vote: the cached table"
    assert blind == standings([r for r in rows if r["blind"]]) and named == standings([r for r in rows if not r["blind"]])
    assert sum(s.votes for s in blind) == 2 * 250 and sum(s.votes for s in named) == 2 * 250
    quiet = Leaderboard(rows)
    assert quiet.blind.solves == 0, "votes alone fit nothing"
    assert quiet.standings() == (blind, named) and quiet.blind.solves + quiet.named.solves == 4


def test_a_batch_of_bootstrap_resamples_fits_each_as_alone():
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 6, (7, 4, 4)).astype(float)
    stack[:, range(4), range(4)] = 0
    batched = bradley_terry(stack)
    for points, scores in zip(stack, batched):
        assert scores == pytest.approx(bradley_terry(points), abs=1e-8)


def test_chat_text_shows_as_written_and_code_fences_hold_any_backticks():
    answer = "Here it is:\n\ndef f(x):\n    # add one\n    return x * 2 + 1\n\n1. then <b>bold</b>\n```python\n# kept\n```\n"
    shown = literal(answer)
    assert shown.startswith("Here it is:\n\ndef f(x):\n&nbsp;&nbsp;&nbsp;&nbsp;\\# add one\n"
                            "&nbsp;&nbsp;&nbsp;&nbsp;return x \\* 2 + 1\n\n1\\. then \\<b>bold\\</b>\n")
    assert shown.endswith("```python\n# kept\n```\n"), "a fenced block stays a highlighted block"
    assert _source(shown) == answer
    code = 'doc = """\n```\nnot the end\n```\n"""\n'
    assert fence(code) == f"````python\n{code.rstrip()}\n````"
