"""What a person watching sees: the one console (stderr) and the one progress-bar style of qlcode."""

from __future__ import annotations

import resource

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qlcode.ranks import is_main_process

console = Console(stderr=True, quiet=not is_main_process())  # one voice per run, whatever the launcher


def progress_bar(label: str, *fields: str, show: bool = True) -> Progress:
    """Label, bar, n/total, the given fields, elapsed, ETA; shown by the main process only."""
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), *(TextColumn(f) for f in fields),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=not (show and is_main_process()))


def peak_memory_gb() -> float:
    """Peak GPU memory allocated by torch on CUDA; peak resident memory of this process on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
