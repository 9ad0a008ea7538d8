"""Prompt text that does not depend on the model family (each family's chat template is in qlcode.families)."""


def comment_prompt(instruction: str, context: str = "") -> str:
    """An instruction as Python comment lines, the natural prompt for a base or Python code model."""
    text = instruction.strip() + (f"\n\n{context.strip()}" if context.strip() else "")
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())

