"""Where this process computes: its device, its dtypes, and its rank among the processes of a run.

Policy: CUDA when present, else CPU, through the same code. On CUDA the 4-bit path computes in
bf16 (fp16 where the GPU lacks bf16); on CPU it computes in fp32 with bitsandbytes' CPU kernels.
Under a launcher (torchrun, accelerate launch) each process owns the GPU of its LOCAL_RANK, and
only the main process (RANK 0) writes the run directory; the others train and wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def local_rank() -> int:
    """This process's index on its machine (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """The one process that writes metrics, progress, checkpoints' extras, the adapter, card and summary."""
    return int(os.environ.get("RANK", 0)) == 0


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # unquantized weights
    compute_dtype: torch.dtype  # 4-bit matmuls

    @property
    def device_map(self) -> dict[str, int | str]:
        return {"": self.device.index or 0} if self.device.type == "cuda" else {"": "cpu"}


def placement(dtype: str = "auto", compute_dtype: str = "auto") -> Placement:
    """This process's device (the GPU of LOCAL_RANK) and dtypes; auto = bf16 on GPUs that support it,
    fp16 on older GPUs, fp32 on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank() % torch.cuda.device_count())
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        device, auto = torch.device("cpu"), torch.float32
    weights = auto if dtype == "auto" else DTYPES[dtype]
    return Placement(device, weights, weights if compute_dtype == "auto" else DTYPES[compute_dtype])
