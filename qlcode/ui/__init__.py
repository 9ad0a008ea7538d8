"""The side-by-side playground, one module per job (imported only when the UI is used; gradio with it).

- prompts: what each mode sends the model (cut to MAX_PROMPT_CHARS, and saying so)
- pool: the models it offers (one shared base, adapters on it, other models beside it; nothing
  else) and both panes' generation streaming at once, stoppable
- transcript: what the panes show (chat text as written, code in fences that hold any backticks)
- votes: a vote per generation, written as DPO preference rows
- leaderboard: the votes aggregated per model (Bradley-Terry with bootstrap intervals), blind and
  named votes apart, fitted only when read after new votes
- access: the exposure warning and the logins for Gradio's authentication
- app: the Gradio app wiring them together
"""
