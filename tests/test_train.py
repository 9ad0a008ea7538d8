"""Training through TRL: SFT and DPO learn, masking is exact, outputs reload, resume is faithful."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import TrainerCallback

from qlcode.runs import read_jsonl
from qlcode.errors import QlcodeError
from qlcode.models import load_recipe_base, load_tokenizer
from qlcode.train import build_trainer, train

from conftest import make_recipe, write_jsonl

ROWS = [{"instruction": f"Return {i} plus {j}.", "input": "", "output": f"def f():\n    return {i} + {j}\n"}
        for i in range(6) for j in range(4)]


class Keep(TrainerCallback):
    """Keeps the trained model and can stop training after a given step, as a kill would."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.model = stop_at, None

    def on_step_end(self, args, state, control, **kw):
        self.subnormal = (torch.tensor([1e-39]) * 1.0).item()  # 0.0 where CPU arithmetic flushes subnormals
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kw):
        self.model = model


@pytest.fixture
def rows_file(tmp_path):
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def _labelled(trainer, i: int) -> list[int]:
    row = trainer.train_dataset[i]
    return [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]


def test_completion_only_masking_is_exact_for_instruct_conversations(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, data={"template": "codellama-instruct", "validation": 0})
    trainer, _ = build_trainer(recipe)
    tok = trainer.processing_class
    for i in range(len(trainer.train_dataset)):
        row = trainer.train_dataset[i]
        text = tok.decode(row["input_ids"])
        answer = text.split(" [/INST]", 1)[1]
        assert text.startswith("<s>[INST] Return ") and answer.endswith(" </s>")
        assert tok.decode(_labelled(trainer, i)) == answer  # exactly the response tokens and eos


def test_completion_only_masking_is_exact_for_prompt_completion(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, data={"template": "completion", "validation": 0})
    trainer, _ = build_trainer(recipe)
    tok = trainer.processing_class
    for i in range(len(trainer.train_dataset)):
        text = tok.decode(trainer.train_dataset[i]["input_ids"])
        prompt, sep, completion = text.partition("\ndef f():")
        assert prompt.startswith("<s># Return ") and sep
        assert tok.decode(_labelled(trainer, i)) == "def f():" + completion and completion.endswith("</s>")


def test_training_on_every_token_when_asked(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, data={"validation": 0, "train_on_completions_only": False})
    trainer, _ = build_trainer(recipe)
    row = trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]


def test_sft_lowers_the_loss_and_writes_a_complete_run(tmp_path, tiny_base, rows_file):
    keep = Keep()
    recipe = make_recipe(tmp_path, tiny_base, rows_file, train={"max_steps": 12, "save_steps": 6})
    result = train(recipe, extra_callbacks=[keep])
    assert result.eval_loss_after < result.eval_loss_before
    run = tmp_path / "run"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "recipe.yaml", "README.md",
                 "metrics.jsonl", "summary.json", "checkpoints/checkpoint-12/trainer_state.json"):
        assert (run / name).is_file(), name
    rows = read_jsonl(run / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert rows[0]["step"] == 0 and rows[0]["eval_loss"] == pytest.approx(result.eval_loss_before)
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_gb"] > 0 for r in rows if "loss" in r)
    card = (run / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    assert f"| eval loss after | {result.eval_loss_after:.4f} |" in card
    assert json.loads((run / "summary.json").read_text())["steps"] == 12
    # subnormals were flushed while training (a 100x slow path on CPU otherwise), and are not after it
    assert keep.subnormal == 0.0 and (torch.tensor([1e-39]) * 1.0).item() > 0

    # the saved adapter reloads onto a fresh base to the same logits
    tok = load_tokenizer(recipe.model.base)
    ids = tok(["def add(a, b):\n    return a + b\n"], return_tensors="pt")["input_ids"]
    reloaded = PeftModel.from_pretrained(load_recipe_base(recipe), str(run)).eval()
    with torch.no_grad():
        want = keep.model.eval()(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
        with reloaded.disable_adapter():
            base = reloaded(input_ids=ids).logits
    assert torch.equal(got, want)
    assert (want - base).abs().max() > 1e-3  # the adapter changes the model


def test_packing_trains(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, data={"packing": True, "max_length": 256, "validation": 0})
    unpacked, _ = build_trainer(make_recipe(tmp_path, tiny_base, rows_file, data={"validation": 0}))
    trainer, _ = build_trainer(recipe)
    assert len(trainer.train_dataset) < len(unpacked.train_dataset)
    trained = sum(sum(lab != -100 for lab in r["labels"]) for r in trainer.train_dataset)
    assert trained == sum(sum(lab != -100 for lab in r["labels"]) for r in unpacked.train_dataset)
    assert trainer.train().training_loss > 0


def test_dpo_starts_at_ln2_and_falls(tmp_path, tiny_base):
    pref = [{"prompt": f"Return {i}.", "chosen": f"def f():\n    return {i}\n", "rejected": "pass"} for i in range(16)]
    f = write_jsonl(tmp_path / "pref.jsonl", pref)
    recipe = make_recipe(tmp_path, tiny_base, f, fmt="preference", train={"method": "dpo", "max_steps": 8, "learning_rate": 2e-2})
    result = train(recipe)
    assert result.eval_loss_before == pytest.approx(math.log(2), abs=1e-6)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    assert losses[-1] < losses[0] - 0.05
    assert result.eval_loss_after < result.eval_loss_before
    assert not (tmp_path / "run" / "ref").exists(), "only the trained adapter is saved, not TRL's reference copy"


def test_resume_after_a_kill_ends_with_the_same_adapter(tmp_path, tiny_base, rows_file):
    steps = {"max_steps": 6, "save_steps": 3}
    straight = make_recipe(tmp_path / "a", tiny_base, rows_file, train=steps)
    train(straight)

    broken = make_recipe(tmp_path / "b", tiny_base, rows_file, train=steps)
    with pytest.raises(QlcodeError, match="training stopped at step 3; continue with --resume"):
        train(broken, extra_callbacks=[Keep(stop_at=3)])
    run = tmp_path / "b" / "run"
    assert not (run / "adapter_model.safetensors").exists(), "an interrupted run never looks finished"
    with pytest.raises(QlcodeError) as e:
        train(broken)
    assert str(e.value) == f"{run} holds an unfinished run; continue it with --resume, or delete it to start over"
    train(broken, resume=True)

    a = load_file(tmp_path / "a" / "run" / "adapter_model.safetensors")
    b = load_file(run / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    la = [r["loss"] for r in read_jsonl(tmp_path / "a" / "run" / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert lb == pytest.approx(la, abs=1e-6) and len(lb) == 6
    with pytest.raises(QlcodeError, match="already holds a finished adapter"):
        train(broken, resume=True)


@pytest.mark.parametrize("optimizer", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_train_on_cpu(tmp_path, tiny_base, rows_file, optimizer):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, train={"optimizer": optimizer, "max_steps": 4},
                         data={"validation": 0})
    trainer, _ = build_trainer(recipe)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert type(opt).__module__.startswith("bitsandbytes.optim") and opt.args.optim_bits == 8
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if "lora_A" in n)


def test_dpo_after_sft_uses_the_sft_adapter_as_reference(tmp_path, tiny_base, rows_file):
    sft = make_recipe(tmp_path / "sft", tiny_base, rows_file, train={"max_steps": 6})
    train(sft)
    pref = [{"prompt": f"Return {i}.", "chosen": f"def f():\n    return {i}\n", "rejected": "pass"} for i in range(16)]
    f = write_jsonl(tmp_path / "pref.jsonl", pref)
    dpo = make_recipe(tmp_path / "dpo", tiny_base, f, fmt="preference", lora={"adapter": str(tmp_path / "sft" / "run")},
                      train={"method": "dpo", "max_steps": 4})
    result = train(dpo)
    # the policy starts as the SFT adapter; ln 2 means the reference is that adapter, not the bare base
    assert result.eval_loss_before == pytest.approx(math.log(2), abs=1e-6)
    sft_weights = load_file(tmp_path / "sft" / "run" / "adapter_model.safetensors")
    dpo_weights = load_file(tmp_path / "dpo" / "run" / "adapter_model.safetensors")
    assert sft_weights.keys() == dpo_weights.keys()
    assert any(not torch.equal(sft_weights[k], dpo_weights[k]) for k in sft_weights)


def test_missing_tracker_and_missing_adapter_are_clear(tmp_path, tiny_base, rows_file):
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(QlcodeError, match=r"recipe.yaml:\d+: train.report_to: wandb is not installed on this machine: "
                                              r"pip install wandb, or set train.report_to: none$"):
            make_recipe(tmp_path, tiny_base, rows_file, train={"report_to": "wandb"})
    recipe = make_recipe(tmp_path, tiny_base, rows_file, lora={"adapter": str(tmp_path / "nowhere")})
    with pytest.raises(QlcodeError, match=r"^lora.adapter: '.*nowhere' holds no adapter_config.json; train that adapter first"):
        build_trainer(recipe)


def test_neftune_reaches_the_trainer_and_trains(tmp_path, tiny_base, rows_file):
    recipe = make_recipe(tmp_path, tiny_base, rows_file, train={"sft": {"neftune_noise_alpha": 5.0}, "max_steps": 2},
                         data={"validation": 0})
    trainer, _ = build_trainer(recipe)
    assert trainer.args.neftune_noise_alpha == 5.0
    assert trainer.train().global_step == 2
