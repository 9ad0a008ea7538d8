"""One rank of tests/test_distributed.py's FSDP check (run under torch.distributed.run, gloo):
shard the 4-bit micro model with LoRA the way qlcode's fsdp_config makes the Trainer shard it
(transformers -> accelerate's FSDP2 plugin -> fully_shard), next to an unsharded copy; rank 0
writes what it measured to argv[1]/result.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from peft import PeftModel
from torch.distributed.tensor import DTensor
from transformers import TrainingArguments
from transformers.distributed.fsdp import update_fsdp_plugin_peft

from qlcode.distributed.adapter import gathered_adapter
from qlcode.distributed.fsdp import fsdp_config
from qlcode.models import Quantization, load_base, load_tokenizer, with_lora
from qlcode.runs import RunDir

BASE = "builtin:micro-codellama"
QUANT = Quantization(bits=4, storage_dtype="fp32")  # on CPU the model's dtype is fp32: the storage matches it


def lora_model():
    return with_lora(load_base(BASE, QUANT, dtype="fp32"), r=8, alpha=16, dropout=0.0, target_modules="all-linear",
                     gradient_checkpointing=False, seed=0)


def loss_of(model, batch):
    return model(input_ids=batch, labels=batch).loss


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    reference, model = lora_model(), lora_model()
    args = TrainingArguments(output_dir=str(out / "trainer"), fsdp=True, fsdp_config=fsdp_config(), use_cpu=True,
                             report_to=[])
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)),
                                  mixed_precision="no", is_main_process=rank == 0, parallelism_config=None,
                                  torch_device_mesh=None, device=torch.device("cpu"))
    update_fsdp_plugin_peft(model, accelerator)  # what the Trainer does for a PEFT model before preparing it
    model = fsdp2_prepare_model(accelerator, model)

    weights4 = [p for n, p in model.named_parameters() if "base_layer.weight" in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    sharded = all(isinstance(p, DTensor) and p.to_local().numel() < p.numel() for p in weights4 + lora)

    torch.manual_seed(1)
    batch = torch.randint(3, 1000, (2, 32))  # the same batch on every rank: FSDP's averaged gradient is this batch's
    ref_loss, loss = loss_of(reference, batch), loss_of(model, batch)
    ref_loss.backward()
    loss.backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.requires_grad}
    scale = max(g.abs().max().item() for g in ref_grads.values())  # lora_A's gradients are 0 while lora_B is
    grad_error = max((grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads) / scale

    for m in (reference, model):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        opt.step()
        opt.zero_grad()
    adapter = gathered_adapter(model)  # every rank: a collective
    trained = {n: p.detach() for n, p in reference.named_parameters() if p.requires_grad}
    step_error = max((adapter[n] - trained[n]).abs().max().item() for n in trained)
    after_loss = loss_of(model, batch).item()

    if rank == 0:
        run = RunDir(out / "run")
        run.path.mkdir()
        run.save_adapter(model, load_tokenizer(BASE), BASE, "card", adapter)
        reloaded = PeftModel.from_pretrained(load_base(BASE, QUANT, dtype="fp32"), run.path)
        with torch.no_grad():
            reload_error = abs(loss_of(reloaded, batch).item() - loss_of(reference, batch).item())
        (out / "result.json").write_text(json.dumps({
            "sharded": sharded, "n_weights4": len(weights4), "n_lora": len(lora),
            "loss": loss.item(), "ref_loss": ref_loss.item(), "grad_rel_error": grad_error,
            "step_error": step_error, "loss_after_step": after_loss, "reload_loss_error": reload_error,
            "ref_loss_after_step": loss_of(reference, batch).item(),
        }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
