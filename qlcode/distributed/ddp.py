"""DDP through the Trainer: one fix for evaluating before training."""

from __future__ import annotations


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
