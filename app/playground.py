"""The side-by-side playground UI: two panes, one prompt, three modes, run the answers, vote.

All logic is in qlcode.playground; this file only lays it out and wires the events.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from qlcode.playground import MAX_NEW_TOKENS, Pool, Settings, record_vote, run_answer

MODES = ["chat", "complete", "infill"]


def build(pool: Pool, votes: Path, left: str, right: str) -> gr.Blocks:
    choices = pool.choices()
    for spec in (left, right):
        if spec not in choices:
            choices.append(spec)

    def answer(spec, mode, prompt, prefix, suffix, settings, history):
        try:
            for text in pool.stream(spec, mode, prompt, settings, history, prefix, suffix):
                yield text
        except Exception as e:  # the pane shows it; the app keeps serving
            yield f"error: {type(e).__name__}: {e}"

    def send(mode, l_spec, r_spec, prompt, prefix, suffix, temperature, top_p, max_new_tokens, seed, l_hist, r_hist):
        settings = Settings(temperature, top_p, int(max_new_tokens), int(seed))
        hist = (l_hist or []) if mode == "chat" else []
        l_text = r_text = ""
        for l_text in answer(l_spec, mode, prompt, prefix, suffix, settings, hist):
            yield l_text, r_text, l_hist, r_hist
        hist = (r_hist or []) if mode == "chat" else []
        for r_text in answer(r_spec, mode, prompt, prefix, suffix, settings, hist):
            yield l_text, r_text, l_hist, r_hist
        if mode == "chat":
            l_hist, r_hist = [*(l_hist or []), [prompt, l_text]], [*(r_hist or []), [prompt, r_text]]
        yield l_text, r_text, l_hist, r_hist

    def run_tests(mode, prefix, suffix, l_text, r_text, asserts):
        def one(text):
            code = prefix + text + suffix if mode == "infill" else text
            r = run_answer(code, asserts)
            return "passed" if r.outcome == "passed" else f"{r.outcome}: {r.error_type or ''}".strip(": ")
        return one(l_text), one(r_text)

    def vote(choice, mode, prompt, prefix, suffix, l_spec, r_spec, l_text, r_text):
        shown = f"{prefix}<FILL>{suffix}" if mode == "infill" else prompt
        record_vote(votes, shown, (l_spec, l_text), (r_spec, r_text), choice)
        return f"saved to {votes}" if choice != "tie" else f"tie saved to {votes.with_suffix('.ties.jsonl')}"

    with gr.Blocks(title="qlcode playground") as demo:
        gr.Markdown("# qlcode playground\nOne prompt, two models side by side. Code runs only in the sandbox.")
        with gr.Row():
            mode = gr.Radio(MODES, value="complete", label="mode")
            temperature = gr.Slider(0.0, 1.5, value=0.2, step=0.05, label="temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top_p")
            max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="max new tokens")
            seed = gr.Number(0, precision=0, label="seed")
        prompt = gr.Textbox(label="prompt (chat and complete)", lines=4, elem_id="prompt")
        with gr.Row():
            prefix = gr.Textbox(label="prefix (infill)", lines=3)
            suffix = gr.Textbox(label="suffix (infill)", lines=3)
        send_btn = gr.Button("Send", variant="primary", elem_id="send")
        l_hist, r_hist = gr.State([]), gr.State([])
        with gr.Row():
            with gr.Column():
                l_spec = gr.Dropdown(choices, value=left, label="left model", allow_custom_value=True)
                l_out = gr.Textbox(label="left answer", lines=12, elem_id="left-answer")
                l_run = gr.Textbox(label="left tests", elem_id="left-tests")
            with gr.Column():
                r_spec = gr.Dropdown(choices, value=right, label="right model", allow_custom_value=True)
                r_out = gr.Textbox(label="right answer", lines=12, elem_id="right-answer")
                r_run = gr.Textbox(label="right tests", elem_id="right-tests")
        asserts = gr.Textbox(label="asserts to run against each answer", lines=3)
        run_btn = gr.Button("Run tests")
        with gr.Row():
            votes_btns = [gr.Button(label) for label in ("Left is better", "Tie", "Right is better")]
        vote_status = gr.Markdown()

        send_btn.click(send, [mode, l_spec, r_spec, prompt, prefix, suffix, temperature, top_p, max_new_tokens, seed, l_hist, r_hist],
                       [l_out, r_out, l_hist, r_hist], api_name="send")
        run_btn.click(run_tests, [mode, prefix, suffix, l_out, r_out, asserts], [l_run, r_run], api_name="run_tests")
        for btn, choice in zip(votes_btns, ("left", "tie", "right")):
            btn.click(lambda *a, c=choice: vote(c, *a), [mode, prompt, prefix, suffix, l_spec, r_spec, l_out, r_out],
                      vote_status, api_name=f"vote_{choice}")
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo
