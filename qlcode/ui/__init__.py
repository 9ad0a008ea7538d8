"""The side-by-side playground, one module per job (imported only when the UI is used; gradio with it).

- prompts: what each mode sends the model (cut to MAX_PROMPT_CHARS, and saying so)
- pool: the models (one shared base, adapters on it, other models beside it) and both panes'
  generation streaming at once
- votes: a vote per generation, written as DPO preference rows
- leaderboard: the votes aggregated per model (Bradley-Terry with bootstrap intervals)
- app: the Gradio app wiring them together
"""
