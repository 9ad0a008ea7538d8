"""The playground's Gradio app: two chat panes answering at once, tests run on each answer, a vote
per generation, blind mode, and a leaderboard.

Every endpoint has a name and every API input the name of its function parameter, for
gradio_client users: /send, /stop, /regenerate, /new_chat, /run_tests, /vote_left, /vote_tie,
/vote_right, /leaderboard. Model fields take only the pool's choices (Gradio refuses any other value,
and the pool refuses it again).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from qlcode.errors import QlcodeError
from qlcode.execution.judge import program_names, run_tests
from qlcode.execution.sandbox import Limits
from qlcode.progress import console
from qlcode.ui.access import exposure
from qlcode.ui.leaderboard import Leaderboard, Standing
from qlcode.ui.pool import MAX_NEW_TOKENS, SEED_MAX, Pane, Pool, Settings
from qlcode.ui.prompts import MODES, Prompt, pane_prompt, user_turn
from qlcode.ui.transcript import turn as transcript_turn
from qlcode.ui.votes import Generation, VoteBook

TEST_LIMITS = Limits(timeout_s=10, cpu_s=10)
SIDES = ("A", "B")
MODE_HELP = {
    "chat": "**chat** uses your *message* (Enter sends, Shift+Enter starts a new line); each pane keeps its own "
            "conversation (New chat starts over).",
    "complete": "**complete** uses your *text*: the model continues it (Enter sends, Shift+Enter starts a new line).",
    "infill": "**infill** uses the *prefix* and *suffix*: the model writes the middle.",
}
LEADERBOARD_COLUMNS = ["model", "votes", "wins", "losses", "ties", "win rate", "score (Bradley-Terry, Elo scale)", "95% interval"]
LOCKED = "this blind conversation is over: its models are revealed; press New chat to start another"
NO_TESTS = "tests: -"


@dataclass
class Session:
    """One browser session's conversation: which models sit where, what each pane's model saw."""

    key: tuple = ()  # what the conversation is (mode, blind, system prompt, models asked for): a change starts over
    models: tuple[str, str] = ("", "")  # left, right as placed (drawn at random in blind mode)
    blind: bool = False
    histories: tuple[list, list] = field(default_factory=lambda: ([], []))  # chat messages each model saw
    transcripts: tuple[list, list] = field(default_factory=lambda: ([], []))  # what each pane shows
    generation: Generation | None = None
    last: tuple | None = None  # (mode, turn, notice, prompts) of the last answered input: what Regenerate redoes
    voted: bool = False
    revealed: bool = False  # a blind chat whose vote showed the names: no more turns


class Arrival:
    """ASGI middleware stamping each request's arrival time (time.perf_counter()) in its state, so a
    generation's first-token time includes the wait in Gradio's queue."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrived"] = time.perf_counter()
        await self.app(scope, receive, send)


def _arrived(request: gr.Request | None) -> float:
    """When the request reached the server (now, when served without the Arrival middleware)."""
    state = getattr(getattr(request, "request", None), "state", None)
    return getattr(state, "arrived", None) or time.perf_counter()


def _label(i: int, session: Session, blind: bool, models: tuple[str, str]) -> str:
    if not blind:
        return f"{'left' if i == 0 else 'right'}: {models[i] or '-'}"
    return f"model {SIDES[i]}: {models[i]}" if session.voted else f"model {SIDES[i]} (hidden until you vote)"


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


def leaderboard_rows(table: list[Standing]) -> list[list]:
    return [[s.model, s.votes, s.wins, s.losses, s.ties, f"{s.win_rate:.0%}", round(s.score), f"{s.low:.0f} to {s.high:.0f}"]
            for s in table]


def settings_of(temperature: float, top_p: float, max_new_tokens: float, seed, blind: bool) -> Settings:
    """The sampling settings, checked; blind mode samples with a seed of its own, so that nobody can
    replay an answer with each model to tell them apart."""
    settings = Settings(float(temperature), float(top_p), int(max_new_tokens), _whole(seed))
    if not blind:
        return settings
    if settings.temperature == 0:
        raise QlcodeError("blind mode samples: set a temperature above 0 (a greedy answer could be replayed with "
                          "each model to tell them apart)")
    return replace(settings, seed=random.randrange(SEED_MAX + 1))


def build(pool: Pool, votes: Path, left: str, right: str) -> gr.Blocks:
    """The app; votes go under the directory VOTES (see qlcode.ui.votes)."""
    book = VoteBook(votes)
    board = Leaderboard(book.rows())
    choices = pool.choices()
    for spec in (left, right):
        if spec not in choices:
            raise QlcodeError(f"{spec!r} is not a model of this playground; pick one of: {', '.join(choices)}")
    vote_off = [gr.Button(interactive=False)] * 3
    stops: dict[str, threading.Event] = {}  # the running generation's stop, per browser session

    def pair(left_model: str, right_model: str, blind: bool) -> tuple[str, str]:
        if not blind:
            return left_model, right_model
        if len(choices) < 2:
            raise gr.Error(f"blind mode draws two different models, and this playground has only {', '.join(choices)}: "
                           "train an adapter on this base, or name another model with --left or --right")
        return tuple(random.sample(choices, 2))

    def answer(session: Session, mode: str, turn: dict, cut: str, settings: Settings, asserts: str, message_out,
               request: gr.Request | None):
        """Both panes answer the turn (streamed), then the asserts run on both answers; `cut` says how the input was cut."""
        since = _arrived(request)
        prompts = [pane_prompt(mode, turn, session.histories[i]) for i in (0, 1)]
        session.generation, session.voted = None, False
        owner = request.session_hash if request else ""
        stop = stops[owner] = threading.Event()
        panes: list[Pane] = []
        for panes in pool.stream(list(session.models), prompts, settings, since, stop):
            yield (*_chats(session, prompts, panes), *[p.stats() for p in panes], NO_TESTS, NO_TESTS,
                   cut, *vote_off, "", message_out, session)
        if stops.get(owner) is stop:  # finished: nothing left to stop
            del stops[owner]
        notice = " ".join(n for n in (cut, stop.is_set() and "Stopped: the answers end where you stopped them.") if n)
        # a chat answer as the chat template renders it back (trimmed); code modes keep every character
        answers = tuple(p.text.strip() if mode == "chat" else p.text for p in panes)
        for i in (0, 1):
            session.transcripts[i].extend(transcript_turn(prompts[i], panes[i].error and f"error: {panes[i].error}" or answers[i]))
            if mode == "chat" and not panes[i].error:  # a failed turn stays out of what the model sees next
                session.histories[i].extend([prompts[i].messages[-1], {"role": "assistant", "content": answers[i]}])
        session.last = (mode, turn, cut, tuple(prompts))
        if not any(p.error for p in panes):
            session.generation = Generation(mode, session.models, tuple(prompts), answers,
                                            prompt_text=pool.laid_out(session.models[0], prompts[0]) if mode == "infill" else "",
                                            blind=session.blind)
        tests = run_tests_on(session.generation, asserts) if session.generation and asserts.strip() else (NO_TESTS, NO_TESTS)
        can_vote = session.generation is not None and all(a.strip() for a in answers)
        yield (*_chats(session, None, panes), *[p.stats() for p in panes], *tests, notice,
               *[gr.Button(interactive=can_vote)] * 3, "", message_out, session)

    def send(mode: str, message: str, prefix: str, suffix: str, system: str, asserts: str, left_model: str,
             right_model: str, blind: bool, temperature: float, top_p: float, max_new_tokens: float, seed: float,
             session: Session, request: gr.Request):
        """Both panes answer the input at once; then the asserts run on both answers."""
        if mode not in MODES:
            raise gr.Error(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            settings = settings_of(temperature, top_p, max_new_tokens, seed, bool(blind))
        except QlcodeError as e:
            raise gr.Error(str(e)) from None
        if not (message.strip() if mode != "infill" else (prefix + suffix).strip()):
            raise gr.Error("type a prefix or a suffix first" if mode == "infill" else "type a message first")
        system = system.strip() if mode == "chat" else ""
        key = (mode, bool(blind), system, *(() if blind else (left_model, right_model)))
        if key == session.key and mode == "chat" and session.revealed:
            raise gr.Error(LOCKED)
        if key != session.key or mode != "chat":
            start = [{"role": "system", "content": system}] if system else []
            session = Session(key=key, models=pair(left_model, right_model, bool(blind)), blind=bool(blind),
                              histories=(list(start), list(start)))
        turn, notice = user_turn(mode, message, prefix, suffix)
        yield from answer(session, mode, turn, notice, settings, asserts, "" if mode == "chat" else gr.skip(), request)

    def regenerate(asserts: str, temperature: float, top_p: float, max_new_tokens: float, seed: float,
                   session: Session, request: gr.Request):
        """Answer the last input again in both panes with the next seed, replacing the last answers."""
        if session.last is None:
            raise gr.Error("nothing to regenerate yet: send a prompt first")
        if session.revealed:
            raise gr.Error(LOCKED)
        try:
            seed = (_whole(seed) + 1) % (SEED_MAX + 1) if isinstance(_whole(seed), int) else seed
            settings = settings_of(temperature, top_p, max_new_tokens, seed, session.blind)
        except QlcodeError as e:
            raise gr.Error(str(e)) from None
        mode, turn, notice, prompts = session.last
        for i in (0, 1):
            del session.transcripts[i][-2:]
            if mode == "chat":
                session.histories[i][:] = list(prompts[i].messages[:-1])
        for out in answer(session, mode, turn, notice, settings, asserts, gr.skip(), request):
            yield *out, seed

    def stop(request: gr.Request):
        """Stop the running generation: each pane keeps what it has written so far."""
        event = stops.get(request.session_hash if request else "")
        if event is not None:
            event.set()

    def _chats(session: Session, prompts: list[Prompt] | None, panes: list[Pane]):
        for i in (0, 1):
            live = transcript_turn(prompts[i], f"error: {panes[i].error}" if panes[i].error else panes[i].text) if prompts else []
            yield gr.Chatbot(value=session.transcripts[i] + live, label=_label(i, session, session.blind, session.models))

    def new_chat(blind: bool, left_model: str, right_model: str):
        """Clear both conversations, the answers' test results and the vote; blind mode hides the model names."""
        fresh = Session()
        labels = [_label(i, fresh, bool(blind), (left_model, right_model)) for i in (0, 1)]
        return (*[gr.Chatbot(value=[], label=label) for label in labels], "", "", NO_TESTS, NO_TESTS, "", *vote_off,
                gr.Button(interactive=True), gr.Button(interactive=True), gr.Dropdown(visible=not blind),
                gr.Dropdown(visible=not blind), fresh)

    def run_tests(asserts: str, session: Session):
        """Run the asserts on both panes' last answers again (after editing them)."""
        return run_tests_on(session.generation, asserts)

    def asserts_changed():
        return ("tests: - (the asserts changed: Run tests again)",) * 2

    def vote(choice: str, session: Session):
        try:
            row = book.record(session.generation, choice)
        except QlcodeError as e:
            raise gr.Error(str(e)) from None
        board.add(row)
        session.voted = True
        session.revealed = session.blind and row["mode"] == "chat"
        winner = {"left": "the left answer", "right": "the right answer", "tie": "a tie"}[choice]
        reveal = f" Model A was **{session.models[0]}**, model B **{session.models[1]}**." if session.blind else ""
        over = " This blind conversation is over: New chat starts another." if session.revealed else ""
        status = f"Saved {winner} to {book.root / (row['mode'] + '.jsonl' if choice != 'tie' else 'ties.jsonl')}.{reveal}{over}"
        return (status, *vote_off, *[gr.Chatbot(label=_label(i, session, session.blind, session.models)) for i in (0, 1)],
                *[gr.Button(interactive=not session.revealed)] * 2, session)

    def vote_left(session: Session):
        """The left answer is better."""
        return vote("left", session)

    def vote_tie(session: Session):
        """Neither is better."""
        return vote("tie", session)

    def vote_right(session: Session):
        """The right answer is better."""
        return vote("right", session)

    def leaderboard():
        """The votes so far, per model: blind votes, then votes cast with the names shown."""
        return tuple(leaderboard_rows(table) for table in board.standings())

    def show_mode(mode: str):
        chat_or_complete = mode in ("chat", "complete")
        return (MODE_HELP[mode], gr.Textbox(visible=chat_or_complete, label="message" if mode == "chat" else "text to complete"),
                gr.Textbox(visible=not chat_or_complete), gr.Textbox(visible=not chat_or_complete),
                gr.Textbox(visible=mode == "chat"), gr.Button(visible=mode == "chat"),
                gr.Button(interactive=True), gr.Button(interactive=True))

    with gr.Blocks(title="qlcode playground") as demo:
        gr.Markdown("# qlcode playground\nOne input, two models answering side by side at once. "
                    "Code runs only in the sandbox; votes become DPO preference data.")
        session = gr.State(Session())
        with gr.Tab("Arena"):
            with gr.Row():
                mode = gr.Radio(list(MODES), value="chat", label="mode", elem_id="mode")
                blind = gr.Checkbox(False, label="blind: two models drawn at random, hidden until the vote (starts a new chat)",
                                    elem_id="blind")
            mode_help = gr.Markdown(MODE_HELP["chat"], elem_id="mode-help")
            with gr.Row():
                left_model = gr.Dropdown(choices, value=left, label="left model", elem_id="left-model")
                right_model = gr.Dropdown(choices, value=right, label="right model", elem_id="right-model")
            system = gr.Textbox(label="system prompt (chat; changing it starts a new conversation)", lines=1, max_lines=6,
                                elem_id="system", placeholder="You are a careful Python programmer.")
            with gr.Row(equal_height=True):
                chats, stats, tests = [], [], []
                for side, spec in (("left", left), ("right", right)):
                    with gr.Column():
                        chats.append(gr.Chatbot(label=f"{side}: {spec}", height=460, elem_id=f"{side}-chat",
                                                buttons=["copy", "copy_all"], feedback_options=None, latex_delimiters=[]))
                        stats.append(gr.Markdown("", elem_id=f"{side}-stats", height=28))
                        tests.append(gr.Markdown(NO_TESTS, elem_id=f"{side}-tests", height=28))
            # one line that grows: Enter sends (Gradio submits a one-line box on Enter), Shift+Enter adds a line
            message = gr.Textbox(label="message", lines=1, max_lines=16, elem_id="prompt")
            with gr.Row():
                prefix = gr.Textbox(label="prefix (before the gap)", lines=4, visible=False, elem_id="prefix")
                suffix = gr.Textbox(label="suffix (after the gap)", lines=4, visible=False, elem_id="suffix")
            asserts = gr.Textbox(label="tests: asserts run on both answers after each generation, in the sandbox", lines=3,
                                 elem_id="asserts", placeholder="assert add(2, 3) == 5")
            with gr.Row():
                send_btn = gr.Button("Send", variant="primary", elem_id="send")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                regen_btn = gr.Button("Regenerate", elem_id="regenerate")
                new_btn = gr.Button("New chat", elem_id="new-chat")
                run_btn = gr.Button("Run tests again", elem_id="run-tests")
            notice = gr.Markdown("", elem_id="notice")
            with gr.Row():
                vote_btns = [gr.Button(text, interactive=False, elem_id=f"vote-{c}")
                             for text, c in (("Left is better", "left"), ("Tie", "tie"), ("Right is better", "right"))]
            vote_status = gr.Markdown("", elem_id="vote-status")
            with gr.Accordion("sampling", open=False):
                with gr.Row():
                    temperature = gr.Slider(0.0, 2.0, value=0.2, step=0.05, label="temperature (0: greedy; blind mode needs above 0)")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top_p")
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="max new tokens")
                    seed = gr.Number(0, label="seed (0 to 4294967295; blind mode draws its own)", elem_id="seed")
        with gr.Tab("Leaderboard") as board_tab:
            gr.Markdown("Score: Bradley-Terry on the Elo scale (400 points = 10:1 odds); the interval is the 2.5th to "
                        "97.5th percentile over 200 bootstrap resamples of the votes.\n\n"
                        "**Blind votes**: the voter did not know which model wrote which answer. This is the ranking.")
            boards = [gr.Dataframe(leaderboard_rows(board.standings()[0]), headers=LEADERBOARD_COLUMNS, interactive=False,
                                   elem_id="leaderboard")]
            gr.Markdown("**Votes with the names shown**: the voter knew the models, so these are kept apart from the ranking above.")
            boards.append(gr.Dataframe(leaderboard_rows(board.standings()[1]), headers=LEADERBOARD_COLUMNS, interactive=False,
                                       elem_id="leaderboard-named"))

        sampling = [temperature, top_p, max_new_tokens, seed]
        outs = [*chats, *stats, *tests, notice, *vote_btns, vote_status, message, session]
        gr.on([send_btn.click, message.submit], send,
              [mode, message, prefix, suffix, system, asserts, left_model, right_model, blind, *sampling, session], outs,
              api_name="send", concurrency_limit=1, concurrency_id="generate")
        regen_btn.click(regenerate, [asserts, *sampling, session], [*outs, seed], api_name="regenerate",
                        concurrency_limit=1, concurrency_id="generate")
        stop_btn.click(stop, None, None, api_name="stop", queue=False)
        fresh_outs = [*chats, *stats, *tests, vote_status, *vote_btns, send_btn, regen_btn, left_model, right_model, session]
        new_btn.click(new_chat, [blind, left_model, right_model], fresh_outs, api_name="new_chat")
        blind.change(new_chat, [blind, left_model, right_model], fresh_outs, api_visibility="private")
        for chat in chats:  # a pane's clear button clears both: the panes hold one conversation's two sides
            chat.clear(new_chat, [blind, left_model, right_model], fresh_outs, api_visibility="private")
        run_btn.click(run_tests, [asserts, session], tests, api_name="run_tests")
        asserts.change(asserts_changed, None, tests, api_visibility="private", queue=False)
        for btn, fn in zip(vote_btns, (vote_left, vote_tie, vote_right)):
            btn.click(fn, [session], [vote_status, *vote_btns, *chats, send_btn, regen_btn, session], api_name=fn.__name__)
        board_tab.select(leaderboard, None, boards, api_name="leaderboard")
        mode.change(show_mode, [mode], [mode_help, message, prefix, suffix, system, new_btn, send_btn, regen_btn],
                    api_visibility="private")
    demo.queue(default_concurrency_limit=4, max_size=64)  # generations one at a time (send's and regenerate's own limit)
    return demo


def _whole(seed) -> int | float | str | None:
    """A whole-valued number as an int (the Number box sends 3.0); anything else as it is, for Settings to refuse."""
    if isinstance(seed, str):  # through the API: a number written as text
        try:
            seed = float(seed)
        except ValueError:
            return seed
    return int(seed) if isinstance(seed, (int, float)) and float(seed).is_integer() else seed


def serve(demo: gr.Blocks, **launch_kwargs) -> gr.Blocks:
    """demo.launch with the Arrival middleware (the queue's wait shows in the first-token time)."""
    demo.launch(app_kwargs={"middleware": [Middleware(Arrival)]}, **launch_kwargs)
    return demo


def launch(base: str, bits: int | None, left: str, right: str | None, votes: Path, host: str, port: int | None,
           share: bool = False, auth: list[tuple[str, str]] | None = None, **kwargs) -> gr.Blocks:
    """Load the pool, build the app and serve it (the CLI's `qlcode play` and app/playground.py); warn
    when others can reach it, and require a login when `auth` lists (user, password) pairs."""
    pool = Pool(base, bits, models=tuple(s for s in (left, right) if s is not None))
    if right is None:
        right = "adapter:quickstart-example" if "adapter:quickstart-example" in pool.choices() else "base"
    for spec in (left, right):  # a wrong spec is an error now, not in the first answer
        pool.target(spec)
    demo = build(pool, votes, left, right)
    warning = exposure(host, share, auth, votes)
    if warning:
        console.print(warning, style="bold yellow" if not auth else None, highlight=False, markup=False)
    return serve(demo, server_name=host, server_port=port, share=share, auth=auth, **kwargs)
