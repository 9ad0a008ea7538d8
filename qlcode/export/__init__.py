"""Exporting trained adapters: merging into the full-precision base, GGUF files, and Hub pushes."""
