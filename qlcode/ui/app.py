"""The playground's Gradio app: two chat panes answering at once, tests run on each answer, a vote
per generation, blind mode, and a leaderboard.

Every endpoint has a name and every API input the name of its function parameter, for
gradio_client users: /send, /new_chat, /run_tests, /vote_left, /vote_tie, /vote_right, /leaderboard.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from qlcode.errors import QlcodeError
from qlcode.execution.judge import program_names, run_tests
from qlcode.execution.sandbox import Limits
from qlcode.ui.leaderboard import standings
from qlcode.ui.pool import MAX_NEW_TOKENS, Pane, Pool, Settings
from qlcode.ui.prompts import MODES, Prompt, pane_prompt, user_turn
from qlcode.ui.votes import Generation, VoteBook

TEST_LIMITS = Limits(timeout_s=10, cpu_s=10)
SIDES = ("A", "B")
MODE_HELP = {
    "chat": "**chat** uses your *message*; each pane keeps its own conversation (New chat starts over).",
    "complete": "**complete** uses your *text*: the model continues it.",
    "infill": "**infill** uses the *prefix* and *suffix*: the model writes the middle.",
}
LEADERBOARD_COLUMNS = ["model", "votes", "wins", "losses", "ties", "win rate", "score (Bradley-Terry, Elo scale)", "95% interval"]


@dataclass
class Session:
    """One browser session's conversation: which models sit where, what each pane's model saw."""

    key: tuple = ()  # (mode, models asked for, blind): changing any starts over
    models: tuple[str, str] = ("", "")  # left, right as placed (shuffled in blind mode)
    histories: tuple[list, list] = field(default_factory=lambda: ([], []))  # chat messages each model saw
    transcripts: tuple[list, list] = field(default_factory=lambda: ([], []))  # what each pane shows
    generation: Generation | None = None
    voted: bool = False


def _fence(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def _turn(prompt: Prompt, answer: str) -> list[dict]:
    """A pane's transcript entry: chat as written (code blocks render as code); complete and infill
    show the whole program the answer makes (what the tests run), as code."""
    user = prompt.shown() if prompt.mode == "chat" else _fence(prompt.shown())
    reply = answer if prompt.mode == "chat" else _fence(prompt.program(answer))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def _label(i: int, session: Session, blind: bool) -> str:
    side = "left" if i == 0 else "right"
    if not blind:
        return f"{side}: {session.models[i] or '-'}"
    return f"model {SIDES[i]}: {session.models[i]}" if session.voted else f"model {SIDES[i]} (hidden until you vote)"


def _test_line(prompt: Prompt, answer: str, asserts: str) -> str:
    r = run_tests(prompt.program(answer), asserts, TEST_LIMITS, program_names(prompt.text or prompt.prefix + prompt.suffix))
    return "tests: passed" if r.outcome == "passed" else f"tests: {r.outcome}" + (f" ({r.error_type})" if r.error_type else "")


def run_tests_on(gen: Generation | None, asserts: str) -> tuple[str, str]:
    """Both panes' code with the asserts, in the sandbox, at the same time."""
    if gen is None:
        return "tests: no answer yet (send a prompt first)", "tests: no answer yet (send a prompt first)"
    if not asserts.strip():
        return "tests: none (type asserts to run them on each answer)", "tests: none (type asserts to run them on each answer)"
    with ThreadPoolExecutor(2) as ex:
        return tuple(ex.map(lambda i: _test_line(gen.prompts[i], gen.answers[i], asserts), (0, 1)))


def leaderboard_rows(book: VoteBook) -> list[list]:
    return [[s.model, s.votes, s.wins, s.losses, s.ties, f"{s.win_rate:.0%}", round(s.score), f"{s.low:.0f} to {s.high:.0f}"]
            for s in standings(book.rows())]


def build(pool: Pool, votes: Path, left: str, right: str) -> gr.Blocks:
    """The app; votes go under the directory VOTES (see qlcode.ui.votes)."""
    book = VoteBook(votes)
    choices = pool.choices()
    choices += [s for s in (left, right) if s not in choices]
    vote_off = [gr.Button(interactive=False)] * 3

    def send(mode: str, message: str, prefix: str, suffix: str, asserts: str, left_model: str, right_model: str,
             blind: bool, temperature: float, top_p: float, max_new_tokens: float, seed: float, session: Session):
        """Both panes answer the input at once; then the asserts run on both answers."""
        try:
            settings = Settings(float(temperature), float(top_p), int(max_new_tokens), _whole(seed))
        except QlcodeError as e:
            raise gr.Error(str(e)) from None
        if mode not in MODES:
            raise gr.Error(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not (message.strip() if mode != "infill" else (prefix + suffix).strip()):
            raise gr.Error("type a prefix or a suffix first" if mode == "infill" else "type a message first")
        key = (mode, left_model, right_model, bool(blind))
        if key != session.key or mode != "chat":
            models = [left_model, right_model]
            if blind:
                random.shuffle(models)
            session = Session(key=key, models=tuple(models))
        turn, notice = user_turn(mode, message, prefix, suffix)
        prompts = [pane_prompt(mode, turn, session.histories[i]) for i in (0, 1)]
        session.generation, session.voted = None, False
        panes: list[Pane] = []
        for panes in pool.stream(list(session.models), prompts, settings):
            yield (*_chats(session, prompts, panes, blind), *[p.stats() for p in panes], "tests: -", "tests: -",
                   notice, *vote_off, session)
        # a chat answer as the chat template renders it back (trimmed); code modes keep every character
        answers = tuple(p.text.strip() if mode == "chat" else p.text for p in panes)
        for i in (0, 1):
            session.transcripts[i].extend(_turn(prompts[i], panes[i].error and f"error: {panes[i].error}" or answers[i]))
            if mode == "chat" and not panes[i].error:  # a failed turn stays out of what the model sees next
                session.histories[i].extend([prompts[i].messages[-1], {"role": "assistant", "content": answers[i]}])
        if not any(p.error for p in panes):
            session.generation = Generation(mode, session.models, tuple(prompts), answers,
                                            prompt_text=pool.laid_out(session.models[0], prompts[0]) if mode == "infill" else "",
                                            blind=bool(blind))
        tests = run_tests_on(session.generation, asserts) if session.generation and asserts.strip() else ("tests: -", "tests: -")
        can_vote = session.generation is not None and all(a.strip() for a in answers)
        yield (*_chats(session, None, panes, blind), *[p.stats() for p in panes], *tests, notice,
               *[gr.Button(interactive=can_vote)] * 3, session)

    def _chats(session: Session, prompts: list[Prompt] | None, panes: list[Pane], blind: bool):
        for i in (0, 1):
            live = _turn(prompts[i], f"error: {panes[i].error}" if panes[i].error else panes[i].text) if prompts else []
            yield gr.Chatbot(value=session.transcripts[i] + live, label=_label(i, session, blind))

    def new_chat(session: Session):
        """Clear both conversations and the answers' test results."""
        return [], [], "", "", "tests: -", "tests: -", "", *vote_off, Session()

    def run_tests(asserts: str, session: Session):
        """Run the asserts on both panes' last answers again (after editing them)."""
        return run_tests_on(session.generation, asserts)

    def vote(choice: str, blind: bool, session: Session):
        try:
            row = book.record(session.generation, choice)
        except QlcodeError as e:
            raise gr.Error(str(e)) from None
        session.voted = True
        winner = {"left": "the left answer", "right": "the right answer", "tie": "a tie"}[choice]
        reveal = f" Model A was **{session.models[0]}**, model B **{session.models[1]}**." if blind else ""
        status = f"Saved {winner} to {book.root / (row['mode'] + '.jsonl' if choice != 'tie' else 'ties.jsonl')}.{reveal}"
        return (status, *vote_off, *[gr.Chatbot(label=_label(i, session, blind)) for i in (0, 1)],
                leaderboard_rows(book), session)

    def vote_left(blind: bool, session: Session):
        """The left answer is better."""
        return vote("left", blind, session)

    def vote_tie(blind: bool, session: Session):
        """Neither is better."""
        return vote("tie", blind, session)

    def vote_right(blind: bool, session: Session):
        """The right answer is better."""
        return vote("right", blind, session)

    def leaderboard():
        """The votes so far, per model."""
        return leaderboard_rows(book)

    def show_mode(mode: str):
        chat_or_complete = mode in ("chat", "complete")
        return (MODE_HELP[mode], gr.Textbox(visible=chat_or_complete, label="message" if mode == "chat" else "text to complete"),
                gr.Textbox(visible=not chat_or_complete), gr.Textbox(visible=not chat_or_complete),
                gr.Button(visible=mode == "chat"))

    def show_models(blind: bool):
        return gr.Dropdown(visible=not blind), gr.Dropdown(visible=not blind)

    with gr.Blocks(title="qlcode playground") as demo:
        gr.Markdown("# qlcode playground\nOne input, two models answering side by side at once. "
                    "Code runs only in the sandbox; votes become DPO preference data.")
        session = gr.State(Session())
        with gr.Tab("Arena"):
            with gr.Row():
                mode = gr.Radio(list(MODES), value="chat", label="mode", elem_id="mode")
                blind = gr.Checkbox(False, label="blind: hide the models and shuffle the sides until the vote", elem_id="blind")
            mode_help = gr.Markdown(MODE_HELP["chat"], elem_id="mode-help")
            with gr.Row():
                left_model = gr.Dropdown(choices, value=left, label="left model", allow_custom_value=True, elem_id="left-model")
                right_model = gr.Dropdown(choices, value=right, label="right model", allow_custom_value=True, elem_id="right-model")
            with gr.Row(equal_height=True):
                chats, stats, tests = [], [], []
                for side in ("left", "right"):
                    with gr.Column():
                        chats.append(gr.Chatbot(label=f"{side}: {left if side == 'left' else right}", height=460,
                                                elem_id=f"{side}-chat", buttons=["copy", "copy_all"], feedback_options=None))
                        stats.append(gr.Markdown("", elem_id=f"{side}-stats", height=28))
                        tests.append(gr.Markdown("tests: -", elem_id=f"{side}-tests", height=28))
            message = gr.Textbox(label="message", lines=4, elem_id="prompt")
            with gr.Row():
                prefix = gr.Textbox(label="prefix (before the gap)", lines=4, visible=False, elem_id="prefix")
                suffix = gr.Textbox(label="suffix (after the gap)", lines=4, visible=False, elem_id="suffix")
            asserts = gr.Textbox(label="tests: asserts run on both answers after each generation, in the sandbox", lines=3,
                                 elem_id="asserts", placeholder="assert add(2, 3) == 5")
            with gr.Row():
                send_btn = gr.Button("Send", variant="primary", elem_id="send")
                new_btn = gr.Button("New chat", elem_id="new-chat")
                run_btn = gr.Button("Run tests again", elem_id="run-tests")
            notice = gr.Markdown("", elem_id="notice")
            with gr.Row():
                vote_btns = [gr.Button(text, interactive=False, elem_id=f"vote-{c}")
                             for text, c in (("Left is better", "left"), ("Tie", "tie"), ("Right is better", "right"))]
            vote_status = gr.Markdown("", elem_id="vote-status")
            with gr.Accordion("sampling", open=False):
                with gr.Row():
                    temperature = gr.Slider(0.0, 2.0, value=0.2, step=0.05, label="temperature (0: greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top_p")
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="max new tokens")
                    seed = gr.Number(0, precision=0, label="seed (0 to 4294967295)", elem_id="seed")
        with gr.Tab("Leaderboard") as board_tab:
            gr.Markdown("Votes per model. Score: Bradley-Terry on the Elo scale (400 points = 10:1 odds); "
                        "the interval is the 2.5th to 97.5th percentile over 200 bootstrap resamples of the votes.")
            board = gr.Dataframe(leaderboard_rows(book), headers=LEADERBOARD_COLUMNS, interactive=False, elem_id="leaderboard")

        outs = [*chats, *stats, *tests, notice, *vote_btns, session]
        send_btn.click(send, [mode, message, prefix, suffix, asserts, left_model, right_model, blind, temperature, top_p,
                              max_new_tokens, seed, session], outs, api_name="send", concurrency_limit=1)
        new_btn.click(new_chat, [session], [*chats, *stats, *tests, vote_status, *vote_btns, session], api_name="new_chat")
        for chat in chats:  # a pane's clear button clears both: the panes hold one conversation's two sides
            chat.clear(new_chat, [session], [*chats, *stats, *tests, vote_status, *vote_btns, session], api_visibility="private")
        run_btn.click(run_tests, [asserts, session], tests, api_name="run_tests")
        for btn, fn in zip(vote_btns, (vote_left, vote_tie, vote_right)):
            btn.click(fn, [blind, session], [vote_status, *vote_btns, *chats, board, session], api_name=fn.__name__)
        board_tab.select(leaderboard, None, board, api_name="leaderboard")
        mode.change(show_mode, [mode], [mode_help, message, prefix, suffix, new_btn], api_visibility="private")
        blind.change(show_models, [blind], [left_model, right_model], api_visibility="private")
    demo.queue(default_concurrency_limit=4, max_size=64)  # generations one at a time (send's own limit)
    return demo


def _whole(seed: float | None) -> int | float | None:
    """A whole-valued number as an int (the Number box sends 3.0); anything else as it is, for Settings to refuse."""
    return int(seed) if isinstance(seed, (int, float)) and float(seed).is_integer() else seed


def launch(base: str, bits: int | None, left: str, right: str | None, votes: Path, host: str, port: int | None,
           share: bool = False, **kwargs) -> gr.Blocks:
    """Load the pool, build the app and serve it (the CLI's `qlcode play` and app/playground.py)."""
    pool = Pool(base, bits)
    if right is None:
        right = "adapter:quickstart-example" if "adapter:quickstart-example" in pool.choices() else "base"
    for spec in (left, right):  # a wrong spec is an error now, not in the first answer
        pool.target(spec)
    demo = build(pool, votes, left, right)
    demo.launch(server_name=host, server_port=port, share=share, **kwargs)
    return demo
