"""qlcode: QLoRA and LoRA fine-tuning for Code Llama-family models, driven by YAML recipes.

The layers, each importing only those above it: the recipe and its schema; the library (placement,
models, data, methods, train, runs, inference, kernels, execution, export); the command line
(qlcode.cli); the UI (qlcode.ui, Gradio, imported only by `qlcode play` and app/playground.py); and
the build-time scripts of the built-in assets (qlcode.builtin.build), which nothing imports.
"""

__version__ = "0.1.0"
