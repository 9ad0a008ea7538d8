"""Where this process computes: its device and its dtypes.

Policy: CUDA when present, else CPU, through the same code. On CUDA the 4-bit path computes in
bf16 (fp16 where the GPU lacks bf16); on CPU it computes in fp32 with bitsandbytes' CPU kernels.
Under a launcher (torchrun, accelerate launch) each process owns the GPU of its LOCAL_RANK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qlcode.ranks import local_rank

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


def cap_gpu_memory(capacity: int) -> None:
    """Cap this process's allocations on its GPU at `capacity` bytes (torch's per-process memory
    fraction), so that a run on a large GPU fails where the smaller card would. No GPU: nothing to cap."""
    if not torch.cuda.is_available():
        return
    device = placement().device
    total = torch.cuda.get_device_properties(device).total_memory
    if capacity > total:
        from qlcode.errors import QlcodeError

        raise QlcodeError(f"--memory-cap: {capacity / 2**30:.1f} GiB is more than this GPU's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(capacity / total, device)
