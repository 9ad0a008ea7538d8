"""This process's place among the processes of a run, as a launcher (torchrun, accelerate launch)
sets it in the environment: only the main process (RANK 0) writes the run directory and speaks;
the others train and wait. Without a launcher there is one process, the main one.
"""

from __future__ import annotations

import os


def local_rank() -> int:
    """This process's index on its machine (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """The one process that writes metrics, progress, checkpoints' extras, the adapter, card and summary."""
    return int(os.environ.get("RANK", 0)) == 0
