"""qlcode push against a local stand-in for the Hub, with the real huggingface_hub client."""

from __future__ import annotations

import pytest
import yaml

from qlcode.errors import QlcodeError
from qlcode.export.push import push
from qlcode.train import train

from conftest import make_recipe, write_jsonl
from hub_server import TOKEN, FakeHub
from test_train import ROWS


@pytest.fixture
def hub():
    h = FakeHub()
    yield h
    h.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("push")
    recipe = make_recipe(tmp, tiny_base, write_jsonl(tmp / "rows.jsonl", ROWS), train={"max_steps": 3})
    train(recipe)
    return tmp / "run"


def test_push_uploads_the_adapter_and_its_card(hub, run):
    report = push(run, "alice/tiny-adapter", token=TOKEN, endpoint=hub.endpoint)
    repo = hub.repos["alice/tiny-adapter"]
    assert repo["private"] is True
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml", "tokenizer.json"} <= set(repo["files"])
    assert not any(p.startswith("checkpoints/") for p in repo["files"]), "checkpoints stay local"
    assert repo["files"]["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    card = repo["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["base_model"] and "qlcode" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "loss"
    assert report.commit_url.endswith("/commit/0123abc") and set(report.files) == set(repo["files"])


def test_push_to_a_branch(hub, run):
    push(run, "alice/tiny-adapter", revision="v1", token=TOKEN, endpoint=hub.endpoint)
    assert "v1" in hub.repos["alice/tiny-adapter"]["branches"]


def test_no_token_is_a_clear_error(run, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no saved login
    with pytest.raises(QlcodeError, match=r"^no Hugging Face token: set HF_TOKEN, or log in with `hf auth login`"):
        push(run, "alice/x", endpoint="http://127.0.0.1:9")


def test_someone_elses_namespace_is_refused(hub, run):
    with pytest.raises(QlcodeError, match=r"^the Hub refused creating bob/x \(403\): the namespace is not yours"):
        push(run, "bob/x", token=TOKEN, endpoint=hub.endpoint)


def test_network_failure_retries_then_says_what_was_uploaded(hub, run):
    hub.drop_commits = 10
    with pytest.raises(QlcodeError) as e:
        push(run, "alice/flaky", token=TOKEN, endpoint=hub.endpoint, attempts=3, backoff=0.01)
    assert hub.commit_attempts == 3
    assert "failed 3 times" in str(e.value) and "the repository exists, but none of the" in str(e.value)
    assert hub.repos["alice/flaky"]["files"] == {}
    hub.drop_commits = 1  # one drop, then the retry goes through
    push(run, "alice/flaky", token=TOKEN, endpoint=hub.endpoint, attempts=3, backoff=0.01)
    assert "adapter_model.safetensors" in hub.repos["alice/flaky"]["files"]


def test_the_token_is_never_written_or_logged(hub, run, capfd, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    push(run, "alice/secret-check", token=TOKEN, endpoint=hub.endpoint)
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err + caplog.text
    for f in run.rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f
    assert all(TOKEN.encode() not in data for data in hub.repos["alice/secret-check"]["files"].values())


def test_recipe_push_and_cli_push(hub, tmp_path, tiny_base, monkeypatch):
    import subprocess
    import sys

    from conftest import REPO

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.endpoint)
    recipe = make_recipe(tmp_path, tiny_base, write_jsonl(tmp_path / "rows.jsonl", ROWS), train={"max_steps": 2},
                         hub={"repo_id": "alice/from-recipe", "push": True})
    train(recipe)
    assert "adapter_model.safetensors" in hub.repos["alice/from-recipe"]["files"]

    env = {"HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.endpoint, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "push", str(tmp_path / "run"), "--repo", "alice/cli", "--public"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert "pushed" in res.stdout and hub.repos["alice/cli"]["private"] is False
    assert TOKEN not in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "qlcode.cli", "push", str(tmp_path / "run"), "--repo", "bob/cli"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "the Hub refused creating bob/cli (403)" in res.stderr and "Traceback" not in res.stderr
