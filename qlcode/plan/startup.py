"""lora.init's start-up memory: PiSSA, OLoRA and LoftQ decompose each target weight once, before training.

One layer at a time, so the peak is the largest target layer's (out m, in n, k = min(m, n)), all fp32:
- pissa (PEFT's pissa_init): the weight in fp32 (a copy unless it is fp32 already), its SVD U (m x k),
  S (k), Vh (k x n), then the update s B A (m x n) and the new weight W - s B A (m x n), with U, S, Vh alive;
- olora (PEFT's olora_init): the weight in fp32 (a copy unless it is fp32), its QR Q (m x k), R (k x n), and
  the update s B A (m x n), subtracted in place;
- loftq (qlcode.loftq): the full-precision weight read into fp32 and turned into the residual in place
  (m x n), its SVD U, S, Vh, and the k x k diag(S) PEFT's _low_rank_decomposition builds.
The LAPACK/cuSOLVER workspace inside the decomposition is not counted. Training has not started then: no
gradients, optimizer state or activations exist, so this adds to the weights alone.
"""

from __future__ import annotations

from qlcode.plan.shapes import Shapes

FP32 = 4
# the parts of a plan that exist while lora.init runs: no gradients, optimizer state or activations yet
RESIDENT = ("base weights", "embeddings, lm_head, norms", "buffers", "LoRA weights", "DoRA weights", "CUDA context + allocator")


def init_bytes(out_features: int, in_features: int, init: str, weight_bytes: int) -> int:
    """The peak of lora.init's tensors for one target layer (0 for the default init)."""
    m, n = out_features, in_features
    k = min(m, n)
    copy = FP32 * m * n if weight_bytes != FP32 else 0  # .to(torch.float32) of an fp32 weight is the weight itself
    if init == "pissa":
        return copy + FP32 * (m * k + k + k * n) + 2 * FP32 * m * n
    if init == "olora":
        return copy + FP32 * (m * k + k * n) + FP32 * m * n
    if init == "loftq":
        return FP32 * m * n + FP32 * (m * k + k + k * n) + FP32 * k * k
    return 0


def largest_target(shapes: Shapes, targets: tuple[str, ...], init: str, weight_bytes: int) -> tuple[str, int]:
    """(module name, bytes) of the target layer whose initialisation needs the most memory."""
    found = [(init_bytes(o, i, init, weight_bytes), name) for name, (o, i) in shapes.linears().items() if name in targets]
    size, name = max(found, default=(0, ""))
    return name, size


def startup_line(shapes: Shapes, targets: tuple[str, ...], init: str, weight_bytes: int, resident: int) -> tuple[int, str]:
    """The plan's lora.init line (bytes, detail): the transient, and the start-up peak it makes beside the
    `resident` parts (RESIDENT)."""
    name, size = largest_target(shapes, targets, init, weight_bytes)
    o, i = shapes.linears()[name]
    return size, (f"at start-up, one layer at a time: {name} ({o} x {i}) in fp32 and its "
                  f"{'QR' if init == 'olora' else 'SVD'}; with the weights {(resident + size) / 2**30:.2f} GiB, before training")
