"""4-bit kernels: a torch reference of bitsandbytes' format and Triton kernels, one op per file."""

# The fused MLP (fused_blocks.LoRAMLP) runs a micro batch of more than MLP_TILED_ABOVE tokens in
# tiles of MLP_TILE: its intermediate-wide tensors then exist for one tile at a time. Constants, not
# recipe keys: up to 8192 tokens (every shipped recipe: at most 4 x 2048) the MLP is the one-pass
# function as before; above, tiling costs gate's and up's matmuls once more per tile in backward
# and each weight dequantized once per tile, and saves memory that grows with the sequence (qlcode
# plan counts both sides; tiles of 2048 plan longer sequences than 4096 or 8192 on every GPU size).
MLP_TILE = 2048
MLP_TILED_ABOVE = 8192

# The model types whose MLP and attention blocks fused_blocks.patch_blocks routes through the fused
# functions (their classes are listed there); qlcode plan counts the fused blocks for these only.
FUSED_MODEL_TYPES = ("llama", "qwen2")

# fused_blocks.swiglu and swiglu_backward compute in fp32 SWIGLU_ROWS rows (tokens) at a time and
# write the compute dtype's outputs: their fp32 temporaries (four arrays at most) exist for one
# chunk, not the whole tile. A multiple of 64, so that CPU's vectorised loops meet the same
# elements in a chunk as in the whole tensor (bit-identical values).
SWIGLU_ROWS = 256
