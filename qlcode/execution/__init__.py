"""Executing generated code: the sandbox (more of the execution-grounded evaluation lands here)."""
