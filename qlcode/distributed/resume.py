"""--resume with the world size the checkpoints were written with, or a clear word on what changes."""

from __future__ import annotations

from qlcode.errors import QlcodeError
from qlcode.runs import RunDir


def check_resume(recipe, world_size: int) -> str | None:
    """None when resuming with the checkpoints' own number of processes (or there is nothing to resume);
    a note on what differs for DDP; a QlcodeError for sharded state (FSDP, DeepSpeed)."""
    run = RunDir(recipe.output.run_dir)
    trained = run.recorded_world_size()
    if run.latest_checkpoint() is None or trained in (None, world_size):
        return None
    strategy = recipe.distributed.strategy
    if strategy != "ddp":
        launch = f"--gpus {trained}" if trained > 1 else "without --gpus"
        raise QlcodeError(f"{run.path}: its checkpoints hold {strategy} state sharded over {trained} process(es), and this "
                          f"run has {world_size}: resume with {trained} ({launch} on one machine), or delete the run to "
                          "start over")
    t = recipe.train
    return (f"resuming with {world_size} processes where the checkpoints were written by {trained}: the effective "
            f"batch becomes {t.micro_batch_size} x {t.gradient_accumulation_steps} x {world_size}, the learning-rate "
            "schedule goes on by steps, and the rest of this epoch reads the data in another split than an "
            "uninterrupted run (some rows are skipped or seen twice); resume with the same number to match it")
