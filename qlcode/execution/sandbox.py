"""Run untrusted code and its tests in a separate, locked-down process, never in ours.

Each run gets a private temporary directory (removed afterwards), wall and CPU time limits, a
memory limit, a process limit, no network and no writes outside its directory (see jail.py for
how), captured and truncated output, and, when it ends or times out, every process it started is
killed: its process group, and every process in its pids cgroup (as root). Outcomes: passed,
failed (an assertion), error (with its type), timeout, out of memory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT = 8192
PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))  # cgroup v1, v2
JAIL = Path(__file__).with_name("jail.py")  # run by path: it needs only the standard library


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    procs: int = 16


@dataclass
class Result:
    outcome: str  # passed | failed | error | timeout | oom
    error_type: str | None
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def _read(f) -> str:
    """The captured output, its head and tail kept when it is long."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    if size <= OUTPUT_LIMIT:
        return f.read().decode("utf-8", "replace")
    head = f.read(OUTPUT_LIMIT // 2)
    f.seek(size - OUTPUT_LIMIT // 2)
    return (head + b"\n...[truncated]...\n" + f.read()).decode("utf-8", "replace")


def _classify(returncode: int, stderr: str, timed_out: bool) -> tuple[str, str | None]:
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "timeout", None
    if returncode == 0:
        return "passed", None
    last = next((line for line in reversed(stderr.strip().splitlines()) if line and not line.startswith(" ")), "")
    error_type = last.split(":", 1)[0].strip() if last else f"exit {returncode}"
    if error_type == "MemoryError":
        return "oom", error_type
    if error_type == "AssertionError":
        return "failed", error_type
    return "error", error_type


def make_pids_cgroup(limit: int) -> Path | None:
    """A fresh pids cgroup capped at `limit` processes; None where we may not make one (not root)."""
    if os.geteuid() != 0:
        return None
    for root in PIDS_CGROUP_ROOTS:
        try:
            group = Path(tempfile.mkdtemp(prefix="qlcode-sandbox-", dir=root))
        except OSError:
            continue
        if (group / "pids.max").exists():
            (group / "pids.max").write_text(str(limit))
            return group
        group.rmdir()  # this hierarchy has no pids controller
    return None


def _sweep(pgid: int | None, cgroup: Path | None) -> None:
    """Kill what the run left behind: its process group, and everything in its cgroup."""
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if cgroup is None:
        return
    for _ in range(100):  # a fork bomb may still be spawning while we sweep
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    try:
        cgroup.rmdir()
    except OSError:
        pass


def run(program: str, limits: Limits = Limits()) -> Result:
    """Run `program` (Python source: a solution followed by its tests) in the sandbox."""
    workdir = Path(tempfile.mkdtemp(prefix="qlcode-sandbox-"))
    cgroup = make_pids_cgroup(limits.procs)
    try:
        (workdir / "program.py").write_text(program)
        cmd = [sys.executable, "-I", str(JAIL), "--workdir", str(workdir),
               "--memory-mb", str(limits.memory_mb), "--cpu-s", str(limits.cpu_s), "--procs", str(limits.procs)]
        cmd += ["--cgroup", str(cgroup)] if cgroup is not None else []
        cmd += ["--", "program.py"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        start = time.perf_counter()
        # output goes to files, not pipes: a child left running must not keep us waiting for EOF
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _sweep(proc.pid, cgroup)
            proc.wait()
            stdout, stderr = (_read(f) for f in (out, err))
        outcome, error_type = _classify(proc.returncode, stderr, timed_out)
        return Result(outcome, error_type, proc.returncode, stdout, stderr, time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if cgroup is not None and cgroup.exists():
            _sweep(None, cgroup)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None) -> list[Result]:
    """Run programs in parallel, each in its own sandbox."""
    with ThreadPoolExecutor(workers or max(1, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda p: run(p, limits), programs))
