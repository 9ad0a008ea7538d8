"""The sandbox stops what generated code may try, and the caller survives every attempt."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from qlcode.execution.sandbox import Limits, run, run_many

LIMITS = Limits(timeout_s=4, cpu_s=4, memory_mb=512, procs=16)


def _sandboxed() -> list[int]:
    """Processes still running inside a sandbox directory."""
    found = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and "qlcode-sandbox-" in os.readlink(f"/proc/{p}/cwd"):
                found.append(int(p))
        except OSError:
            pass
    return found


def test_outcomes():
    assert run("assert sum([1, 2]) == 3\nprint('ok')", LIMITS).outcome == "passed"
    r = run("def f(x):\n    return x\nassert f(1) == 2, 'f(1)'", LIMITS)
    assert (r.outcome, r.error_type) == ("failed", "AssertionError") and "f(1)" in r.stderr
    r = run("import json\njson.loads('{')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "json.decoder.JSONDecodeError")


def test_infinite_loop_times_out():
    r = run("while True:\n    pass", LIMITS)
    assert r.outcome == "timeout" and r.seconds < LIMITS.timeout_s + 2


def test_huge_allocation_is_out_of_memory():
    r = run("x = bytearray(10 * 2**30)", LIMITS)
    assert (r.outcome, r.error_type) == ("oom", "MemoryError")


def test_fork_bomb_is_contained_and_swept():
    r = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", LIMITS)
    assert r.outcome == "timeout"
    assert _sandboxed() == [], "every process the bomb made is gone"


def test_no_network_even_to_localhost():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(_accept(server)))
    t.start()
    r = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')", LIMITS)
    t.join()
    server.close()
    assert r.outcome == "error" and r.error_type in ("PermissionError", "OSError", "ConnectionRefusedError")
    assert accepted == [None]


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


def test_no_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run(f"open({str(target)!r}, 'w').write('x')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "PermissionError") and not target.exists()
    r = run("open('inside.txt', 'w').write('x')\nimport os\nassert os.path.getsize('inside.txt') == 1", LIMITS)
    assert r.outcome == "passed", "its own directory is writable"


def test_it_cannot_kill_its_parent():
    r = run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "PermissionError")
    assert os.getpid() > 0  # and we are still here to assert it


def test_output_is_truncated_and_the_directory_removed(tmp_path):
    r = run("import os\nprint(os.getcwd())\nprint('x' * 100000)", LIMITS)
    assert r.outcome == "passed" and len(r.stdout) < 10000 and "[truncated]" in r.stdout
    assert not os.path.exists(r.stdout.splitlines()[0])


def test_runs_in_parallel():
    results = run_many([f"assert {i} % 2 == 0" for i in range(6)], LIMITS, workers=3)
    assert [r.outcome for r in results] == ["passed", "failed"] * 3


@pytest.mark.skipif(os.geteuid() != 0, reason="the pids cgroup is made by root; other users get RLIMIT_NPROC")
def test_no_cgroup_is_left_behind():
    from qlcode.execution.sandbox import PIDS_CGROUP_ROOTS

    run("print(1)", LIMITS)
    for root in PIDS_CGROUP_ROOTS:
        if root.is_dir():
            assert not [p for p in root.iterdir() if p.name.startswith("qlcode-sandbox-")]


def test_process_limit_holds_and_leftovers_are_killed():
    program = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
               "    n += 1\nprint(n)")
    r = run(program, LIMITS)
    assert r.outcome == "passed" and int(r.stdout) < LIMITS.procs
    assert _sandboxed() == [], "the sleeping children did not outlive the run"
