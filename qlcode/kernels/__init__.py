"""4-bit kernels: a torch reference of bitsandbytes' format and Triton kernels, one op per file."""

# The fused MLP (fused_blocks.LoRAMLP) runs a micro batch of more tokens than this in tiles of this
# many: its intermediate-wide tensors then exist for one tile at a time. A constant, not a recipe
# key: up to it (every shipped recipe: at most 4 x 2048) the MLP is the one-pass function as
# before; above it tiling costs gate's and up's matmuls once more per tile in backward and saves
# memory that grows with the sequence (qlcode plan counts both sides).
MLP_TILE = 8192
