"""Run untrusted code and its tests in separate, locked-down processes, never in ours.

Programs go to warm workers (worker.py): processes started once, with a clean environment, that
fork a fresh confined child per program (jail.py says what confines it). Outcomes: passed (the
harness's end-of-run record arrived and nothing raised), failed (an assertion), error (with the
exception's type, or the signal, or EarlyExit when the program ended before its tests did),
timeout, oom. With `cases`, each case (a statement, usually an assert) runs after the program,
caught on its own, and Result.cases says which passed (a list of any other length is refused).
With `steps` (judge.py's plan), the child returns the evaluated values and judge.py decides.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from qlcode.errors import QlcodeError

WORKER = Path(__file__).with_name("worker.py")  # run by path: it needs only the standard library
WORKER_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # none of the caller's variables (tokens)
START_TIMEOUT_S = 60.0
REPLY_GRACE_S = 30.0  # the worker enforces the wall time; this only catches a worker that died


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    procs: int = 16
    disk_mb: int = 64  # all the program may write, as root (a tmpfs); else RLIMIT_FSIZE bounds each file


@dataclass
class Result:
    outcome: str  # passed | failed | error | timeout | oom
    error_type: str | None
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    cases: list[bool] | None = None  # per case, when run with cases; None when they never reported
    values: list | None = None  # with steps: what the child sent, undecoded (untrusted)
    judged: str = "inside"  # where the verdict was decided: inside the sandbox (cases, record) or outside


class _Worker:
    """One warm worker process and its request/reply pipes."""

    def __init__(self) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=WORKER_ENV, cwd="/",
                                     start_new_session=True)
        try:
            self.features = self._reply(START_TIMEOUT_S)
        except RuntimeError as e:
            raise QlcodeError(f"the sandbox could not start its worker: {e}") from None

    def run(self, request: dict, timeout: float) -> dict:
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        return self._reply(timeout)

    def _reply(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.kill()
            self._log.seek(0)
            raise RuntimeError("the sandbox worker stopped answering: "
                               + self._log.read()[-2000:].decode("utf-8", "replace"))
        return json.loads(line)

    def close(self) -> None:
        """Ask it to finish (it removes its directory and cgroup), then make sure it did."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self._log.close()

    def kill(self) -> None:
        """Kill it, and remove what it could not: its directory and its cgroup."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        features = getattr(self, "features", {})
        if features.get("directory"):
            shutil.rmtree(features["directory"], ignore_errors=True)
        for cgroup in {features.get("pids_cgroup"), features.get("memory_cgroup")} - {None}:
            for directory in (os.path.join(cgroup, "run"), cgroup):  # its last run's, then its own
                for _ in range(50):  # the run's processes may take a moment to go
                    try:
                        os.rmdir(directory)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.01)


class WorkerPool:
    """Warm workers shared by all callers; one program at a time each, started as demand grows."""

    def __init__(self, keep: int | None = None) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._keep = keep or max(4, os.cpu_count() or 2)

    def run(self, request: dict, limits: Limits) -> dict:
        worker = self._take()
        try:
            reply = worker.run(request, limits.timeout_s + REPLY_GRACE_S)
        except (OSError, RuntimeError, ValueError) as e:  # the worker is gone; the next run starts another
            worker.kill()
            return {"outcome": "error", "error_type": "SandboxError", "returncode": None, "stdout": "",
                    "stderr": str(e), "seconds": 0.0, "cases": None, "values": None}
        with self._lock:
            if len(self._idle) < self._keep:
                self._idle.append(worker)
                worker = None
        if worker is not None:
            worker.close()
        return reply

    def _take(self) -> _Worker:
        """An idle worker that is still alive, or a new one."""
        while True:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                return _Worker()
            if worker.proc.poll() is None:
                return worker
            worker.kill()  # died while idle (killed from outside): clean up after it

    def features(self) -> dict:
        worker = self._take()
        features = worker.features
        with self._lock:
            self._idle.append(worker)
        return features

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()


_pool = WorkerPool()
atexit.register(lambda: _pool.close())


def _forget_pool() -> None:
    """A forked caller must not share the parent's worker pipes: it starts its own."""
    global _pool
    _pool = WorkerPool()


os.register_at_fork(after_in_child=_forget_pool)


def protections() -> dict:
    """What holds here: root, nobody (runs leave root), namespaces, ipc_bounded (SysV IPC limits in each run's
    namespace), pids_cgroup, memory_cgroup and directory (a
    worker's; a cgroup None where the machine offers none), swap_bounded (the memory bound includes swap, or
    there is none), landlock_abi (0 = none), seccomp."""
    return _pool.features()


def close() -> None:
    """Stop the warm workers now (they also stop when this process exits)."""
    _pool.close()


def run(program: str, limits: Limits = Limits(), cases: list[str] | None = None,
        steps: list[tuple[str, str]] | None = None) -> Result:
    """Run `program` (Python source: a solution, then its tests) in the sandbox; then each of `cases`,
    or each of `steps` (("exec", statement) or ("eval", expression): see judge.py)."""
    start = time.perf_counter()
    request = {"program": program, "cases": cases, "steps": steps, "limits": asdict(limits)}
    reply = _pool.run(request, limits)
    reply["seconds"] = reply["seconds"] or time.perf_counter() - start
    if reply["cases"] is not None and (cases is None or len(reply["cases"]) != len(cases)):
        reply.update(outcome="error", error_type="MalformedRecord", cases=None)  # a record the harness did not write
    return Result(**reply)


def run_many(programs: list[str], limits: Limits = Limits(), workers: int | None = None,
             cases: list[list[str]] | None = None) -> list[Result]:
    """Run programs in parallel, each in its own sandbox; `cases[i]` (if given) after programs[i]."""
    all_cases = cases if cases is not None else [None] * len(programs)
    with ThreadPoolExecutor(workers or max(1, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda pc: run(pc[0], limits, pc[1]), zip(programs, all_cases)))
