"""Gradio front ends; they hold no model logic of their own (that lives in qlcode)."""
