"""ShareGPT and OpenAI chat rows: read as real files hold them, rendered through Code Llama's chat
template, and refused with one line naming the file, the row and the turn."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from qlcode.builtin import MODELS
from qlcode.data import build
from qlcode.families.codellama import CHAT_TEMPLATE as CODELLAMA_INSTRUCT_CHAT_TEMPLATE
from qlcode.errors import DataError
from qlcode.recipe import DataSection

from conftest import write_jsonl

ANSWER = "def reverse(s):\n    return s[::-1]\n"

# Rows shaped as LLaMA-Factory's ShareGPT demo files hold them: extra columns (tools) beside the
# conversation, a system column on some rows, and a system turn inside the conversation on others.
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Write reverse(s) in Python."}, {"from": "gpt", "value": ANSWER},
                       {"from": "human", "value": "Now skip spaces."}, {"from": "gpt", "value": "def reverse(s):\n    return s.replace(' ', '')[::-1]\n"}],
     "tools": "[]", "system": None},
    {"conversations": [{"from": "system", "value": "You write Python."}, {"from": "human", "value": "Add one to x."},
                       {"from": "gpt", "value": "x + 1"}], "tools": "[]", "system": None},
    {"conversations": [{"from": "human", "value": "Square x."}, {"from": "gpt", "value": "x ** 2"}],
     "tools": "[]", "system": "Answer with one expression."},
]

# Rows shaped as OpenAI's chat fine-tuning files hold them: a system turn, a participant name, and
# content as a list of text parts.
OPENAI = [
    {"messages": [{"role": "system", "content": [{"type": "text", "text": "You write Python."}]},
                  {"role": "user", "name": "ada", "content": [{"type": "text", "text": "Write reverse(s)"}, {"type": "text", "text": " in Python."}]},
                  {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}]},
    {"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Add one to x."}]},
                  {"role": "assistant", "weight": 1, "content": [{"type": "text", "text": "x + 1"}]}]},
]


def _build(path, fmt: str, template: str = "codellama-instruct"):
    data = DataSection.model_validate({"datasets": [{"source": str(path), "format": fmt}], "validation": 0, "template": template})
    return build(data)[0]


def _by_first_user(ds) -> dict[str, list[dict]]:
    return {next(m["content"] for m in r["messages"] if m["role"] == "user"): r["messages"] for r in ds}


def test_sharegpt_rows_become_conversations(tmp_path):
    rows = _by_first_user(_build(write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT), "sharegpt"))
    assert rows["Write reverse(s) in Python."] == [
        {"role": "user", "content": "Write reverse(s) in Python."}, {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Now skip spaces."}, {"role": "assistant", "content": "def reverse(s):\n    return s.replace(' ', '')[::-1]\n"}]
    assert rows["Add one to x."][0] == {"role": "system", "content": "You write Python."}
    assert rows["Square x."] == [{"role": "system", "content": "Answer with one expression."},
                                 {"role": "user", "content": "Square x."}, {"role": "assistant", "content": "x ** 2"}]


def test_openai_rows_become_conversations_and_render_with_the_chat_template(tmp_path):
    rows = _by_first_user(_build(write_jsonl(tmp_path / "openai.jsonl", OPENAI), "openai", template="raw"))
    assert rows["Write reverse(s) in Python."] == [
        {"role": "system", "content": "You write Python."}, {"role": "user", "content": "Write reverse(s) in Python."},
        {"role": "assistant", "content": ANSWER}]
    assert rows["Add one to x."][0] == {"role": "system", "content": "Be brief."}  # developer is the system turn's newer name
    tok = AutoTokenizer.from_pretrained(MODELS["micro-codellama"])
    tok.chat_template = CODELLAMA_INSTRUCT_CHAT_TEMPLATE
    text = tok.apply_chat_template(rows["Write reverse(s) in Python."], tokenize=False)
    assert text == (f"<s>[INST] <<SYS>>\nYou write Python.\n<</SYS>>\n\nWrite reverse(s) in Python. [/INST] {ANSWER.strip()} </s>")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_openai_files_mixing_text_and_part_lists_load(tmp_path, suffix):
    """Text content in one row (or turn) and text parts in another: Arrow holds one type per column, so the
    text is read as one part, and every conversation comes out as the file wrote it."""
    mixed = [{"messages": [{"role": "user", "content": "Reverse s."}, {"role": "assistant", "content": ANSWER}]},
             *OPENAI,
             {"messages": [{"role": "user", "content": [{"type": "text", "text": "Square x."}]},
                           {"role": "assistant", "name": "bot", "content": "x ** 2"}]}]
    path = tmp_path / f"mixed{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(mixed))
    else:
        write_jsonl(path, mixed)
    rows = _by_first_user(_build(path, "openai", template="raw"))
    assert len(rows) == 4 and rows["Square x."] == [{"role": "user", "content": "Square x."}, {"role": "assistant", "content": "x ** 2"}]
    assert rows["Reverse s."] == [{"role": "user", "content": "Reverse s."}, {"role": "assistant", "content": ANSWER}]
    assert rows["Write reverse(s) in Python."][1] == {"role": "user", "content": "Write reverse(s) in Python."}
    assert rows["Add one to x."] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add one to x."},
                                     {"role": "assistant", "content": "x + 1"}]
    # a bad part in such a file is still named by its row
    bad = [mixed[0], {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                                   {"role": "assistant", "content": "a cat"}]}]
    with pytest.raises(DataError) as e:
        _build(write_jsonl(tmp_path / "bad.jsonl", bad), "openai")
    assert str(e.value) == (f"{tmp_path / 'bad.jsonl'} row 1: messages[0].content[0] must be a text part {{type: text, text}}, "
                            "got a image_url part; qlcode trains on text only")


@pytest.mark.parametrize("turns, message", [
    ([{"from": "human", "value": "Area of a 5x3 rectangle?"}, {"from": "function_call", "value": '{"name": "area"}'},
      {"from": "gpt", "value": "15"}],
     "conversations[1] must be {from: human|gpt|system, value: text}, got {'from': 'function_call', 'value': '{\"name\": \"area\"}'}; "
     "tool turns have no place in Code Llama's chat template: leave such rows out"),
    ([{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Hi"}],
     "conversations[0] is assistant where user was due; turns alternate user, assistant, user... after an optional system turn "
     "(merge consecutive turns of one speaker)"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}, {"from": "system", "value": "Be brief."}],
     "conversations[2] is a system turn after the conversation started; a system prompt goes first, once"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}],
     "conversations[1] is empty; every user and assistant turn needs text"),
    ([{"from": "human", "value": "Hi"}],
     "a conversation needs at least one assistant turn to train on"),
])
def test_sharegpt_errors_name_file_row_and_turn(tmp_path, turns, message):
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x"}]}
    f = write_jsonl(tmp_path / "chats.jsonl", [good, {"conversations": turns}])
    with pytest.raises(DataError) as e:
        _build(f, "sharegpt")
    assert str(e.value) == f"{f} row 1: {message}"


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": [{"type": "text", "text": "What is in it?"}, {"type": "image_url", "image_url": {"url": "x.png"}}]},
      {"role": "assistant", "content": [{"type": "text", "text": "a cat"}]}],
     "messages[0].content[1] must be a text part {type: text, text}, got a image_url part; qlcode trains on text only"),
    ([{"role": "user", "content": [{"type": "text", "text": "Area?"}]}, {"role": "tool", "content": [{"type": "text", "text": "15"}]}],
     "messages[1] must be {role: system|developer|user|assistant, content}, got role 'tool'; tool turns have no place in "
     "Code Llama's chat template: leave such rows out"),
    ([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "weight": 0, "content": [{"type": "text", "text": "x"}]}],
     "messages[1] has weight 0 (not to be learned), which qlcode does not honour; cut the conversation before it or set its weight to 1"),
    ([{"role": "user", "content": []}, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}],
     "messages[0].content must be text or a non-empty list of text parts, got []"),
])
def test_openai_errors_name_file_row_and_message(tmp_path, messages, message):
    f = write_jsonl(tmp_path / "chats.jsonl", [OPENAI[1], {"messages": messages}])
    with pytest.raises(DataError) as e:
        _build(f, "openai")
    assert str(e.value) == f"{f} row 1: {message}"


def test_chat_formats_do_not_render_as_completions(tmp_path):
    with pytest.raises(DataError, match=r"data.datasets\[0\]: messages rows need data.template instruct or raw"):
        _build(write_jsonl(tmp_path / "s.jsonl", SHAREGPT), "sharegpt", template="completion")
