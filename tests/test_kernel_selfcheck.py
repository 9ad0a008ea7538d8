"""quant.kernels: auto checks qlcode's Triton kernels against bitsandbytes on the model's own first
4-bit layer before using them, falls back with one line saying why, and caches the verdict per GPU
and versions. On CPU the kernels run in Triton's interpreter; CUDA is made to look present."""

from __future__ import annotations

import json

import pytest
import torch

from qlcode.kernels import qlora_linear, selfcheck
from qlcode.kernels.qlora_linear import Kernels
from qlcode.models import Quantization, load_base, use_kernels

TRITON = qlora_linear.TRITON


@pytest.fixture(scope="module")
def model(tiny_base):  # never patched here: auto_kernels only decides
    return load_base(str(tiny_base))


def _pretend_gpu(monkeypatch, tmp_path) -> list:
    """A GPU that looks present, the cache under tmp_path, and the list of the checks run."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    runs = []
    check = selfcheck.check_layer
    monkeypatch.setattr(selfcheck, "check_layer", lambda layer: runs.append(layer) or check(layer))
    return runs


@pytest.fixture
def checks(model, monkeypatch, tmp_path):
    return _pretend_gpu(monkeypatch, tmp_path)  # after the model is loaded: placement asks CUDA for its device


def _key(model) -> str:
    return selfcheck.version_key(selfcheck.first_4bit_layer(model).weight.device)


def _failure_line(model, reason: str) -> str:
    return (f"quant.kernels: auto: using bitsandbytes' 4-bit kernels, qlcode's Triton kernels failed their check on "
            f"{_key(model)}: {reason}")


def test_kernels_that_agree_are_used_and_checked_once(model, checks, tmp_path, capsys):
    assert selfcheck.auto_kernels(model) == "triton"
    assert checks == [model.model.layers[0].self_attn.q_proj], "the model's own first 4-bit layer"
    cache = tmp_path / "qlcode" / "kernel-checks.json"
    verdicts = json.loads(cache.read_text())
    key = _key(model)
    assert list(verdicts) == [key] and verdicts[key]["reason"] is None
    assert key.startswith(("cpu | torch ", "NVIDIA")) and " | triton " in key and " | bitsandbytes " in key
    assert [p.name for p in cache.parent.iterdir()] == ["kernel-checks.json"], "written through a temporary file"
    assert selfcheck.auto_kernels(model) == "triton" and len(checks) == 1, "the second call reads the verdict"
    assert capsys.readouterr().err == ""


def test_a_kernel_that_fails_to_compile_means_bitsandbytes(model, checks, monkeypatch, tmp_path, capsys):
    def compile_error(*args):
        raise RuntimeError("PTX assembly aborted due to errors\nptxas fatal")

    monkeypatch.setattr(qlora_linear, "TRITON", Kernels(compile_error, TRITON.matmul))
    assert selfcheck.auto_kernels(model) == "bitsandbytes"
    line = _failure_line(model, "RuntimeError: PTX assembly aborted due to errors")
    assert capsys.readouterr().err == line + "\n"
    assert selfcheck.auto_kernels(model) == "bitsandbytes" and len(checks) == 1
    err = capsys.readouterr().err
    assert err.startswith(line + " (checked 20") and err.endswith(f"delete {tmp_path / 'qlcode' / 'kernel-checks.json'} to check again)\n")


def test_kernels_that_give_wrong_values_mean_bitsandbytes(model, checks, monkeypatch, capsys):
    def off_by_one_weight(packed, state, dtype):
        w = TRITON.dequantize(packed, state, dtype)
        w.view(-1)[7] = torch.nextafter(w.view(-1)[7], torch.tensor(1.0, dtype=w.dtype))  # one ulp
        return w

    monkeypatch.setattr(qlora_linear, "TRITON", Kernels(off_by_one_weight, TRITON.matmul))
    assert selfcheck.auto_kernels(model) == "bitsandbytes"
    assert capsys.readouterr().err == _failure_line(model, "dequantization differs from bitsandbytes' in 1 of 4096 weights") + "\n"


def test_other_versions_are_checked_again(model, checks, monkeypatch, tmp_path):
    import bitsandbytes

    assert selfcheck.auto_kernels(model) == "triton"
    monkeypatch.setattr(bitsandbytes, "__version__", "9.9.9")
    assert selfcheck.auto_kernels(model) == "triton" and len(checks) == 2
    keys = json.loads((tmp_path / "qlcode" / "kernel-checks.json").read_text())
    assert len(keys) == 2 and any(k.endswith("bitsandbytes 9.9.9") for k in keys)


def test_use_kernels_patches_on_auto_only_after_the_check_and_always_on_triton(tiny_base, monkeypatch, tmp_path):
    models = [load_base(str(tiny_base)) for _ in range(4)]
    runs = _pretend_gpu(monkeypatch, tmp_path)

    def patched(m, kernels):
        return sum("_qlcode_original_forward" in mod.__dict__ for mod in use_kernels(m, Quantization(bits=4, kernels=kernels)).modules())

    assert patched(models[0], "auto") == 14 + 4  # 2 x 7 4-bit layers, 2 x 2 fused blocks
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    monkeypatch.setattr(qlora_linear, "TRITON", Kernels(lambda *a: 1 / 0, TRITON.matmul))
    assert patched(models[1], "auto") == 0
    assert patched(models[2], "triton") == 14 + 4 and len(runs) == 2
    assert patched(models[3], "bitsandbytes") == 0 and len(runs) == 2


def test_auto_on_cpu_uses_bitsandbytes_without_a_check(model, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(selfcheck, "check_layer", lambda layer: pytest.fail("no check on CPU"))
    assert selfcheck.auto_kernels(model) == "bitsandbytes" and not (tmp_path / "qlcode").exists()
