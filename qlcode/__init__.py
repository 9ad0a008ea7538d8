"""qlcode: QLoRA and LoRA fine-tuning for Code Llama-family models, driven by YAML recipes."""

__version__ = "0.1.0"
