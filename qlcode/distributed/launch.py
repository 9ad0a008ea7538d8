"""`qlcode train --gpus N`: start N processes per machine through torch's own launcher (the library
behind torchrun), and tell the user which rank failed when one does.

torch's elastic agent watches its workers: when one dies it stops the others on that machine at
once; a process on another machine fails its next collective (and at the latest after
distributed.timeout_minutes). Nothing waits forever.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from qlcode.errors import QlcodeError


@dataclass(frozen=True)
class Launch:
    """Where the processes of one run live: --gpus per machine, --nnodes machines, this one's rank."""

    gpus: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def world_size(self) -> int:
        return self.gpus * self.nnodes

    @property
    def needed(self) -> bool:
        """Whether this command must start a launcher (not already under one, more than one process)."""
        return self.world_size > 1 and "LOCAL_RANK" not in os.environ

    def check(self) -> None:
        import torch

        if self.gpus < 1 or self.nnodes < 1:
            raise QlcodeError(f"--gpus and --nnodes count processes and machines: at least 1 (got {self.gpus}, {self.nnodes})")
        if not 0 <= self.node_rank < self.nnodes:
            raise QlcodeError(f"--node-rank {self.node_rank}: machines are numbered 0 to {self.nnodes - 1} (--nnodes {self.nnodes})")
        if self.nnodes > 1 and self.master_addr is None:
            raise QlcodeError("--nnodes > 1: give every machine the same --master-addr (the address of the machine "
                              "with --node-rank 0) and --master-port")
        if torch.cuda.is_available() and self.gpus > torch.cuda.device_count():
            raise QlcodeError(f"--gpus {self.gpus}: this machine has {torch.cuda.device_count()} GPUs")
        if self.world_size > 1 and "LOCAL_RANK" in os.environ:
            raise QlcodeError("--gpus/--nnodes start a launcher, but this command already runs under one "
                              "(torchrun or accelerate launch): drop --gpus and --nnodes")

    def options(self) -> list[str]:
        """This launch as `qlcode train` options (none for one process), for the command that resumes it."""
        if not self.needed:
            return []
        out = ["--gpus", str(self.gpus)]
        if self.nnodes > 1:
            out += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank)]
        if self.master_addr is not None:
            out += ["--master-addr", self.master_addr]
        if self.master_port is not None:
            out += ["--master-port", str(self.master_port)]
        return out

    def launcher_args(self, command: list[str]) -> list[str]:
        """torchrun's arguments that run `python -m qlcode.cli COMMAND` in every process."""
        args = ["--nproc_per_node", str(self.gpus), "--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank)]
        if self.nnodes == 1 and self.master_port is None:
            args = ["--standalone", *args]  # a free port on this machine
        else:
            args += ["--master_addr", self.master_addr or "127.0.0.1", "--master_port", str(self.master_port or 29500)]
        return [*args, "--max_restarts", "0", "-m", "qlcode.cli", *command]


def launch(spec: Launch, command: list[str], again: str) -> None:
    """Run `qlcode COMMAND` in spec.gpus processes here (one machine of spec.nnodes); returns when all
    succeeded, else raises QlcodeError naming the first rank that failed and how (`again`: the command
    that resumes this run, printed when the launcher is stopped)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(spec.launcher_args(command)))
    except ChildFailedError as e:
        raise QlcodeError(failure_message(e.failures, spec.nnodes)) from None
    except SignalException as e:  # Ctrl-C or a kill of this launcher: the agent has stopped its processes
        raise QlcodeError(f"the launcher got {e.sigval.name} and stopped every process of this run; continue from "
                          f"the last checkpoint with  {again}") from None


def failure_message(failures: dict, nnodes: int = 1) -> str:
    """'rank 1 (local rank 1, pid 123) was killed by SIGKILL; ...': the first failure that is not the
    launcher's own SIGTERM to the survivors."""
    causes = {r: f for r, f in failures.items() if f.exitcode != -signal.SIGTERM} or failures
    rank, first = min(causes.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    how = f"was killed by {first.signal_name()}" if first.exitcode < 0 else f"exited with code {first.exitcode}"
    text = f"rank {rank} (local rank {first.local_rank}, pid {first.pid}) {how}"
    if first.exitcode == 2:
        text += " (its error is above)"
    text += "; the launcher stopped the run's other processes on this machine"
    if nnodes > 1 and first.exitcode > 0:
        text += " (a process that died on another machine fails this one's next collective: see that machine's output)"
    return text


def relaunch_command(argv: list[str]) -> list[str]:
    """This command's arguments without the launcher's options, for the processes it starts."""
    out, skip = [], False
    takes_value = {"--gpus", "--nnodes", "--node-rank", "--master-addr", "--master-port"}
    for a in argv:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif a.split("=", 1)[0] not in takes_value:
            out.append(a)
    return out
