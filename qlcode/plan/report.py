"""The table `qlcode plan` prints: each part in GiB with what it is, the total, the verdict."""

from __future__ import annotations

from rich.table import Table

from qlcode.plan.fit import Change, usable
from qlcode.plan.memory import GiB, Plan


def gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def plan_table(p: Plan, title: str) -> Table:
    table = Table(title=title)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("what it is")
    for part in p.parts:
        table.add_row(part.name, gib(part.bytes), part.detail)
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{gib(p.total)}[/]", "")
    for part in p.host:
        table.add_row(f"CPU: {part.name}", gib(part.bytes), part.detail + " (not in the GPU total)")
    if p.startup is not None:
        table.add_row(p.startup.name, gib(p.startup.bytes), p.startup.detail + " (not in the total)")
    return table


def longest_line(tokens: int, p: Plan, gpu: str, capacity: int) -> str:
    if tokens == 0:
        return f"no max_length fits {gpu} ({gib(capacity)} GiB) with these settings"
    return (f"longest max_length that fits {gpu} ({gib(capacity)} GiB): {tokens:,} tokens "
            f"(micro batch {p.settings.micro_batch}, planned in steps of 256)")


def verdict(p: Plan, capacity: int, gpu: str) -> str:
    left = usable(p.settings, capacity)
    size = f"{gib(capacity)} GiB" + (f", {gib(left)} besides vLLM's {p.settings.vllm_share:.0%} for generation" if left < capacity else "")
    if p.total <= left:
        return f"[green]fits[/] on {gpu} ({size}): {gib(left - p.total)} GiB to spare"
    return f"[red]does not fit[/] on {gpu} ({size}): {gib(p.total - left)} GiB over"


def changes_table(changes: list[Change]) -> Table:
    table = Table(title="changes that make it fit (each planned again)")
    table.add_column("overrides")
    table.add_column("total GiB", justify="right")
    for c in changes:
        table.add_row(c.text, gib(c.plan.total))
    return table
