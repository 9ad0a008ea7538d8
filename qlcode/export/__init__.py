"""Exporting trained adapters: merged checkpoints (and, later, GGUF files and Hub pushes)."""
