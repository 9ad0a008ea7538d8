"""4-bit kernels: a torch reference of bitsandbytes' format and Triton kernels, one op per file."""
