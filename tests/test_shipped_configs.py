"""The configs `qlcode plan` ships for the families' Hub ids (qlcode/builtin/configs) are the published ones:
each one's parameter count, computed by building the model from it (on the meta device: no memory), is the
count its publisher gives. The count catches a wrong hidden or intermediate size, layer or head count, vocabulary,
bias or tied embedding (a flip of tie_word_embeddings moves every one of these by more than the tolerance)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from qlcode.families import FAMILIES
from qlcode.plan.shapes import shipped_config

# Hub id -> published parameters in billions, to the digits given (the tolerance is half the last digit).
# Sources: the Hub model pages' counts (from the safetensors), which third parties copy: "Parameter Count 3.03B"
# for bigcode/starcoder2-3b (promptlayer.com/models/starcoder2-3b); Qwen2.5-7B 7.616 and Qwen2.5-14B 14.770 (a
# KV-cache study's table of Qwen configs; Qwen2.5-Coder keeps Qwen2.5's architectures, technical report table 1);
# the Qwen2.5-Coder-1.5B card's "Number of Parameters: 1.54B (non-embedding 1.31B)". The 7B/14B/32B cards say
# 7.61B/14.7B/32.5B, rounded from the report, below the weights' own counts. StarCoder2-7B's 7.17B is only
# reached with tied embeddings (untied: 7.40B); StarCoder2-15B does not tie them (tied: 15.66B).
PUBLISHED = {
    "qwen/qwen2.5-coder-1.5b": "1.54", "qwen/qwen2.5-coder-7b": "7.62", "qwen/qwen2.5-coder-14b": "14.8",
    "qwen/qwen2.5-coder-32b": "32.8", "deepseek-ai/deepseek-coder-6.7b-base": "6.74",
    "deepseek-ai/deepseek-coder-33b-base": "33.3", "bigcode/starcoder2-3b": "3.03", "bigcode/starcoder2-7b": "7.17",
    "bigcode/starcoder2-15b": "15.96",
}
# fields that change no parameter, checked against the publishers' configs: StarCoder2's RoPE bases (BigCode's
# Megatron configs, as NVIDIA NeMo's Starcoder2Config3B/7B/15B carry them: 999999.44, 1e6, 1e5), its 16384-token
# context and 4096-token sliding window (model cards); DeepSeek-Coder's 16384 positions, RoPE base 1e5 with linear
# scaling x4; Qwen2.5-Coder's 32768 positions and RoPE base 1e6.
CONTEXT = {"bigcode/starcoder2-3b": (16384, 999999.4420358813, 4096), "bigcode/starcoder2-7b": (16384, 1e6, 4096),
           "bigcode/starcoder2-15b": (16384, 1e5, 4096), "deepseek-ai/deepseek-coder-6.7b-base": (16384, 1e5, None),
           "deepseek-ai/deepseek-coder-33b-base": (16384, 1e5, None), **{
               f"qwen/qwen2.5-coder-{s}": (32768, 1e6, None) for s in ("1.5b", "7b", "14b", "32b")}}


def parameters(hub_id: str) -> int:
    config = shipped_config(hub_id)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # a tied embedding is one parameter, counted once


@pytest.mark.parametrize("hub_id", PUBLISHED)
def test_each_shipped_config_has_its_published_parameter_count(hub_id):
    published = PUBLISHED[hub_id]
    half_digit = 0.5 * 10 ** -len(published.split(".")[1])  # "7.17" -> 0.005 (billions)
    assert abs(parameters(hub_id) / 1e9 - float(published)) <= half_digit, parameters(hub_id)


@pytest.mark.parametrize("hub_id", CONTEXT)
def test_each_shipped_config_has_its_published_context(hub_id):
    config = shipped_config(hub_id)
    positions, theta, window = CONTEXT[hub_id]
    assert config.max_position_embeddings == positions and config.rope_parameters["rope_theta"] == pytest.approx(theta)
    if config.model_type == "starcoder2":
        assert config.sliding_window == window and config.use_bias
    if config.model_type == "llama":  # DeepSeek-Coder
        assert config.rope_parameters["rope_type"] == "linear" and config.rope_parameters["factor"] == 4.0


def test_every_shipped_hub_id_is_checked():
    ids = {i for f in FAMILIES.values() if f.name != "codellama" for i in f.shipped if not i.endswith("-instruct")}
    assert ids == set(PUBLISHED)  # the Instruct ids share their base's file
