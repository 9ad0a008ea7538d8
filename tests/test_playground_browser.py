"""The playground in a real browser: headless Chromium (Debian's) driven by Playwright.

The two panes are the shared micro base and the micro model loaded again as a model of its own, so
both generation paths (one batch on the shared base, a separate model in its own thread) run.
Screenshots of chat, infill and the leaderboard land in test-artifacts/ (docs/ holds copies).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"
LEFT, RIGHT = "base", "builtin:micro-codellama"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (.ci/run installs it: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def pool():
    from qlcode.ui.pool import Pool

    return Pool("builtin:micro-codellama", bits=4, adapters=REPO / "adapters", models=(RIGHT,))


@pytest.fixture
def app(pool, browser, tmp_path):
    """(page, votes directory) on a fresh app."""
    from qlcode.ui.app import build, serve

    demo = serve(build(pool, tmp_path / "votes", LEFT, RIGHT), server_name="127.0.0.1", server_port=None,
                 prevent_thread_lock=True, quiet=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(demo.local_url)
    yield page, tmp_path / "votes"
    page.close()
    demo.close()


def _send(page, text: str | None = None, enter: bool = False) -> None:
    """Send (the button, or Enter in the message box) and wait until both panes have finished."""
    if text is not None:
        page.locator("#prompt textarea").fill(text)
    before = page.locator("#left-chat [data-testid=bot]").count()
    if enter:
        page.locator("#prompt textarea").press("Enter")
    else:
        page.locator("#send").click()
    for side in ("left", "right"):
        page.wait_for_function(f"() => document.querySelectorAll('#{side}-chat [data-testid=bot]').length > {before}", timeout=60_000)
    _finished(page)


def _finished(page) -> None:
    page.wait_for_function("() => ['#left-stats', '#right-stats'].every(s => document.querySelector(s).innerText.startsWith('first token'))",
                           timeout=90_000)  # both finished ('generating · first token ...' while streaming)


def _max_tokens(page, n: int) -> None:
    box = page.get_by_label("max new tokens", exact=False).locator("xpath=..").locator("input[type=number]").first
    if not box.is_visible():
        page.get_by_text("sampling").click()  # open the accordion
    box.fill(str(n))
    box.press("Enter")


def _words(text: str) -> str:
    """The words of a text, as a browser shows them whatever the markup: the chat renders a model's
    answer as Markdown, so white space collapses and marks such as `#` or `*` may vanish."""
    return " ".join(re.findall(r"\w+", text))


def _label(page, side: str) -> str:
    return page.locator(f"#{side}-chat [data-testid=block-label]").inner_text()


def test_a_two_turn_chat_in_both_panes_votes_once_with_the_whole_conversation(app):
    page, votes = app
    _max_tokens(page, 8)
    vote = page.locator("#vote-left")
    assert vote.is_disabled(), "no vote before a generation"
    page.locator("#prompt textarea").fill("Write")
    page.locator("#prompt textarea").press("Shift+Enter")
    page.locator("#prompt textarea").press_sequentially("add.")
    assert page.locator("#prompt textarea").input_value() == "Write\nadd.", "Shift+Enter starts a new line"
    assert page.locator("#left-chat [data-testid=bot]").count() == 0, "and sends nothing"
    _send(page, "Write add.", enter=True)
    assert page.locator("#prompt textarea").input_value() == "", "Enter sent the message and cleared the box"
    page.wait_for_function("() => !document.querySelector('#vote-left').disabled", timeout=30_000)
    _send(page, "And sub?")
    for side in ("left", "right"):
        assert page.locator(f"#{side}-chat [data-testid=user]").all_inner_texts() == ["Write add.", "And sub?"], \
            "turn 1 stays above turn 2"
        assert page.locator(f"#{side}-chat [data-testid=bot]").count() == 2
    page.wait_for_function("() => !document.querySelector('#vote-left').disabled", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    long = "x" * 9000 + "Now mul?"
    _send(page, long)
    assert page.locator("#notice").inner_text().startswith("The prompt was cut to its last 8,000 characters (it had 9,008)")
    assert page.locator("#left-chat [data-testid=user]").last.inner_text() == long[-8000:], "the transcript shows what the model saw"
    answers = {side: page.locator(f"#{side}-chat [data-testid=bot]").all_inner_texts() for side in ("left", "right")}
    page.wait_for_function("() => !document.querySelector('#vote-left').disabled", timeout=30_000)
    vote.click()
    page.wait_for_function("() => document.querySelector('#vote-status').innerText.includes('Saved')", timeout=30_000)
    assert page.locator("#vote-status").inner_text() == f"Saved the left answer to {votes / 'chat.jsonl'}."
    assert vote.is_disabled() and page.locator("#vote-right").is_disabled(), "one vote per generation"
    (row,) = [json.loads(line) for line in (votes / "chat.jsonl").read_text().splitlines()]
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant"] * 2 + ["user"], "the whole conversation"
    assert [m["content"] for m in row["prompt"][::2]] == ["Write add.", "And sub?", long[-8000:]], "the prompt as the model saw it"
    assert [_words(m["content"]) for m in row["prompt"][1::2]] == [_words(a) for a in answers["left"][:2]]
    assert row["chosen"] == [{"role": "assistant", "content": row["chosen"][0]["content"]}]
    assert _words(row["chosen"][0]["content"]) == _words(answers["left"][2])
    assert (row["chosen_model"], row["rejected_model"]) == (LEFT, RIGHT)

    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function("() => document.querySelector('#leaderboard-named').innerText.includes('builtin:micro-codellama')",
                           timeout=30_000)
    cells = [c for c in page.locator("#leaderboard-named").inner_text().split("95% interval", 1)[1].split("\n") if c.strip()]
    assert [cells[i:i + 6] for i in (0, 8)] == [[LEFT, "1", "1", "0", "0", "100%"], [RIGHT, "1", "0", "1", "0", "0%"]]
    assert LEFT not in page.locator("#leaderboard").inner_text(), "a vote with the names shown is not a blind vote"
    page.screenshot(path=str(ARTIFACTS / "playground-leaderboard.png"), full_page=True)


def test_modes_show_their_inputs_and_code_renders_as_code(app):
    page, _ = app
    _max_tokens(page, 12)
    visible = lambda: {k: page.locator(f"#{k}").is_visible() for k in ("prompt", "prefix", "suffix", "new-chat")}  # noqa: E731
    assert visible() == {"prompt": True, "prefix": False, "suffix": False, "new-chat": True}
    page.get_by_label("infill").check()
    page.wait_for_function("() => document.querySelector('#mode-help').innerText.startsWith('infill')")
    assert visible() == {"prompt": False, "prefix": True, "suffix": True, "new-chat": False}
    page.locator("#prefix textarea").fill("def square(x):\n    return ")
    page.locator("#suffix textarea").fill("\n\nprint(square(3))\n")
    page.locator("#asserts textarea").fill("assert square(3) == 9")
    _send(page)
    page.wait_for_function("() => document.querySelector('#left-tests').innerText != 'tests: -' && "
                           "!document.querySelector('#vote-left').disabled", timeout=30_000)
    for side in ("left", "right"):
        assert page.locator(f"#{side}-tests").inner_text().startswith(("tests: passed", "tests: failed", "tests: error"))
        user_code = page.locator(f"#{side}-chat [data-testid=user] pre code.language-python")
        assert "<FILL>" in user_code.inner_text() and user_code.locator("span.token").count() > 0, "highlighted code"
        assert page.locator(f"#{side}-chat [data-testid=bot] .copy_code_button").count() == 1
    page.screenshot(path=str(ARTIFACTS / "playground-infill.png"), full_page=True)
    page.get_by_label("complete").check()
    page.wait_for_function("() => document.querySelector('#mode-help').innerText.startsWith('complete')")
    assert visible() == {"prompt": True, "prefix": False, "suffix": False, "new-chat": False}


HIDDEN = ["model A (hidden until you vote)", "model B (hidden until you vote)"]


def test_blind_mode_hides_the_names_until_the_vote_then_locks_the_conversation(app, pool):
    page, votes = app
    _max_tokens(page, 4)
    assert _label(page, "left") == f"left: {LEFT}"
    page.locator("#blind input").check()
    page.locator("#left-model").wait_for(state="hidden")
    page.wait_for_function("() => document.querySelector('#left-chat [data-testid=block-label]').innerText.includes('hidden')")
    assert [_label(page, s) for s in ("left", "right")] == HIDDEN, "ticking blind hides the names before the first send"
    _send(page, "Write add.")
    _send(page, "And sub?")
    assert [_label(page, s) for s in ("left", "right")] == HIDDEN
    assert not page.locator("#left-model").is_visible() and not page.locator("#right-model").is_visible()
    page.wait_for_function("() => !document.querySelector('#vote-tie').disabled", timeout=30_000)
    page.locator("#vote-tie").click()
    page.wait_for_function("() => document.querySelector('#vote-status').innerText.includes('Saved')", timeout=30_000)
    a, b = (_label(page, s).removeprefix(f"model {x}: ") for s, x in (("left", "A"), ("right", "B")))
    assert a != b and {a, b} <= set(pool.choices()), "two different models drawn from the pool, named after the vote"
    assert page.locator("#vote-status").inner_text().endswith(
        f"Model A was {a}, model B {b}. This blind conversation is over: New chat starts another.")
    assert page.locator("#send").is_disabled() and page.locator("#regenerate").is_disabled(), "no turn after the reveal"
    row = json.loads((votes / "ties.jsonl").read_text())
    assert row["models"] == [a, b] and row["blind"] is True
    page.locator("#new-chat").click()
    page.wait_for_function("() => !document.querySelector('#send').disabled")
    assert [_label(page, s) for s in ("left", "right")] == HIDDEN and page.locator("#left-chat [data-testid=bot]").count() == 0
    page.get_by_role("tab", name="Leaderboard").click()
    page.wait_for_function(f"() => document.querySelector('#leaderboard').innerText.includes('{a}')", timeout=30_000)
    assert a not in page.locator("#leaderboard-named").inner_text(), "the blind vote counts on the blind board only"


def test_stop_regenerate_and_editing_the_asserts(app):
    page, _ = app
    _max_tokens(page, 1024)
    page.get_by_label("complete").check()
    page.wait_for_function("() => document.querySelector('#mode-help').innerText.startsWith('complete')")
    page.locator("#prompt textarea").fill("x = [")
    page.locator("#asserts textarea").fill("assert isinstance(x, list)")
    page.locator("#send").click()
    page.wait_for_function("() => document.querySelector('#left-stats').innerText.startsWith('generating')", timeout=90_000)
    page.locator("#stop").dispatch_event("click")  # a click event now: the page is busy re-rendering the stream
    page.wait_for_function("() => document.querySelector('#notice').innerText.includes('Stopped')", timeout=60_000)
    _finished(page)
    tokens = int(re.search(r"· (\d+) tokens ·", page.locator("#left-stats").inner_text()).group(1))
    assert tokens < 1024, "stopped before the limit (greedy, this prompt runs to it)"
    assert page.locator("#notice").inner_text() == "Stopped: the answers end where you stopped them."
    page.wait_for_function("() => document.querySelector('#left-tests').innerText.startsWith('tests: ') && "
                           "document.querySelector('#left-tests').innerText != 'tests: -'", timeout=30_000)
    page.locator("#asserts textarea").fill("assert x == []")
    page.wait_for_function("() => document.querySelector('#left-tests').innerText.includes('the asserts changed')")
    assert page.locator("#right-tests").inner_text() == "tests: - (the asserts changed: Run tests again)"

    _max_tokens(page, 6)
    page.locator("#regenerate").click()
    page.wait_for_function("() => document.querySelector('#seed input').value === '1'", timeout=60_000)
    _finished(page)
    assert page.locator("#left-chat [data-testid=bot]").count() == 1, "the answer was replaced, not added"
    assert re.search(r"· 6 tokens ·", page.locator("#left-stats").inner_text())
    assert page.locator("#notice").inner_text() == ""


def test_chat_answers_show_as_written_and_code_blocks_hold_backticks(app, pool, monkeypatch):
    """What the panes render, with the model's answer fixed (the rendering is under test, not the model)."""
    from qlcode.ui.pool import Pane

    answer = "Here:\n\ndef inc(x):\n    # add one\n    return x + 1\n\n# Not a heading\n"

    def fixed(specs, prompts, settings, since=None, stop=None):
        yield [Pane(text=answer, tokens=9, first_token_s=0.1, queued_s=0.0, seconds=0.2, done=True) for _ in specs]
    monkeypatch.setattr(pool, "stream", fixed)
    page, _ = app
    _send(page, "Write inc.")
    bot = page.locator("#left-chat [data-testid=bot]").last
    assert bot.locator("h1, h2, h3, pre").count() == 0, "no heading, no code block: the text as written"
    shown = bot.inner_text().replace("\xa0", " ")
    assert "def inc(x):\n    # add one\n    return x + 1" in shown and "# Not a heading" in shown

    page.reload()  # a fresh session: complete mode starts with empty panes
    page.get_by_label("complete").check()
    page.wait_for_function("() => document.querySelector('#mode-help').innerText.startsWith('complete')")
    text = 'DOC = """\n```\nnot the end\n```\n"""\n'
    _send(page, text)
    user = page.locator("#left-chat [data-testid=user]").last
    user.locator("pre").first.wait_for(timeout=30_000)  # the Markdown renders after the message appears (slower under load)
    assert user.locator("pre").count() == 1 and user.locator("pre").inner_text().rstrip() == text.rstrip(), \
        "a ``` inside the text stays inside the one code block"
