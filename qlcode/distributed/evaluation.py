"""The evaluation before training under the engines: two gaps in the Trainer's handling of it."""

from __future__ import annotations

from qlcode.ranks import is_main_process
from qlcode.progress import console


def can_evaluate_before_training(trainer) -> bool:
    """False under DeepSpeed ZeRO-1/2: the Trainer's evaluate() before train() starts DeepSpeed for
    inference, which transformers allows for ZeRO-3 only ("ZeRO inference only makes sense with ZeRO
    Stage 3"); the run then logs no eval loss at step 0, and evaluates as usual once training runs."""
    if not trainer.is_deepspeed_enabled or trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        return True
    if is_main_process():
        console.print("DeepSpeed ZeRO-2: no evaluation before training (transformers runs ZeRO inference with stage 3 only)")
    return False


def wrap_again_after_evaluation(trainer) -> None:
    """Let trainer.train() wrap the model in DDP after a trainer.evaluate().

    accelerate 1.15 marks a model prepared for evaluation alone (which gets no DDP wrapper) as
    prepared for good; the Trainer's training prepare then returns it unwrapped, and every rank
    trains on its own shard with no gradient all-reduce (measured on 2 gloo processes: the ranks'
    gradient norms differ at step 1; the saved adapter is rank 0's alone). FSDP and DeepSpeed are
    prepared in full by evaluate and need nothing.
    """
    from transformers.training_args import ParallelMode

    model = trainer.model
    if (trainer.args.parallel_mode == ParallelMode.DISTRIBUTED and not trainer.is_fsdp_enabled
            and not trainer.is_deepspeed_enabled and trainer.model_wrapped is model):
        model._is_accelerate_prepared = False
