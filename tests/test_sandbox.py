"""The sandbox stops what generated code may try, reports what really happened, and the caller survives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from qlcode.execution import sandbox
from qlcode.execution.sandbox import Limits, run, run_many

# Programs that end get a wall limit far beyond their time on a loaded machine (they take well under a second
# idle, 3-5x that under load); programs that must time out get a short one, so the suite does not wait long
LIMITS = Limits(timeout_s=30, cpu_s=10, memory_mb=512, procs=16, disk_mb=32)
TIMES_OUT = Limits(timeout_s=3, cpu_s=10, memory_mb=512, procs=16, disk_mb=32)
FEATURES = sandbox.protections()
needs_root = pytest.mark.skipif(not FEATURES["root"], reason="leaving root for nobody needs root")
needs_namespaces = pytest.mark.skipif(not FEATURES["namespaces"],
                                      reason="PID/mount/UTS namespaces need root and a kernel that allows them")


def _sandboxed() -> list[int]:
    """Processes still running inside one of our (idle) workers' directories: on a shared machine, other
    sandboxes' programs run too, as nobody, in directories of the same name."""
    with sandbox._pool._lock:
        ours = tuple(w.features["directory"] for w in sandbox._pool._idle)
    assert ours, "a worker that ran a program is idle again"
    found = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.readlink(f"/proc/{p}/cwd").startswith(ours):
                found.append(int(p))
        except OSError:
            pass
    return found


def test_outcomes():
    assert run("assert sum([1, 2]) == 3\nprint('ok')", LIMITS).outcome == "passed"
    r = run("def f(x):\n    return x\nassert f(1) == 2, 'f(1)'", LIMITS)
    assert (r.outcome, r.error_type) == ("failed", "AssertionError") and "f(1)" in r.stderr
    r = run("import json\njson.loads('{')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "JSONDecodeError") and "json.decoder.JSONDecodeError" in r.stderr
    r = run("def f(:\n    pass", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "SyntaxError")


@pytest.mark.parametrize("cheat, error_type", [
    ("import sys\nsys.exit(0)", "SystemExit"),
    ("import os\nos._exit(0)", "EarlyExit"),
    ("raise SystemExit", "SystemExit"),
    ("import atexit, os\natexit.register(lambda: os._exit(0))", "AssertionError"),
])
def test_exiting_before_the_tests_is_not_a_pass(cheat, error_type):
    r = run(f"{cheat}\nassert 1 == 2", LIMITS)
    assert r.outcome != "passed" and r.error_type == error_type


def test_error_type_is_the_exception_class_not_its_message():
    r = run("assert False, 'a\\nb: c'", LIMITS)
    assert (r.outcome, r.error_type) == ("failed", "AssertionError")
    r = run("raise ValueError('hf_FAKESECRET\\nhf_FAKESECRET: leaked')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "ValueError")
    r = run("raise type('hf_FAKESECRET: leaked', (KeyError,), {})()", LIMITS)
    assert r.error_type == "KeyError", "a class name that is no identifier gives way to its built-in base"
    r = run("print('{\"nonce\": \"0\", \"error\": null}')\nimport sys\nprint('passed', file=sys.stderr)\nassert 0", LIMITS)
    assert r.outcome == "failed", "text the program prints is not the harness's record"


def test_deep_recursion_is_reported_as_the_crash_it_is_quickly():
    # uncapped, the first hangs while unwinding until the wall limit ends it: its outcome would be a timeout
    r = run("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "RecursionError")
    r = run("import sys\nsys.setrecursionlimit(10**7)\nclass A:\n    def __repr__(self):\n        return repr(A())\n"
            "repr(A())", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "SIGSEGV")


def test_infinite_loop_times_out():
    r = run("while True:\n    pass", TIMES_OUT)
    assert r.outcome == "timeout" and r.seconds < TIMES_OUT.timeout_s + 10  # ended by the limit, not by chance


def test_the_cpu_time_limit_is_a_timeout_too():
    # the wall limit is far away, so that a loaded machine cannot reach it first (ended before it: the CPU limit did)
    limits = Limits(timeout_s=120, cpu_s=1, memory_mb=512, procs=16, disk_mb=32)
    r = run("while True:\n    pass", limits)
    assert (r.outcome, r.error_type) == ("timeout", None) and r.seconds < limits.timeout_s
    assert r.returncode in (-signal.SIGXCPU, -signal.SIGKILL)  # SIGKILL where a PID namespace's init ignores SIGXCPU


def test_huge_allocation_is_out_of_memory():
    r = run("x = bytearray(10 * 2**30)", LIMITS)
    assert (r.outcome, r.error_type) == ("oom", "MemoryError")


def test_fork_bomb_is_contained_and_swept():
    r = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", TIMES_OUT)
    assert r.outcome == "timeout"
    assert _sandboxed() == [], "every process the bomb made is gone"


def test_no_network_even_to_localhost():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        r = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')", LIMITS)
        assert r.outcome == "error" and r.error_type in ("PermissionError", "OSError", "ConnectionRefusedError")
        assert _no_connection_waiting(server)


def _no_connection_waiting(server: socket.socket) -> bool:
    server.setblocking(False)
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def test_no_unix_socket_outside_its_directory():
    """A world-writable socket in a world-readable directory: only the sandbox stands in the way."""
    where = tempfile.mkdtemp()
    os.chmod(where, 0o755)
    path = os.path.join(where, "s")
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
            os.chmod(path, 0o777)
            server.listen()
            r = run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.sendall(b'leak')", LIMITS)
            assert (r.outcome, r.error_type) == ("error", "PermissionError") and _no_connection_waiting(server)
    finally:
        shutil.rmtree(where)


def test_no_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run(f"open({str(target)!r}, 'w').write('x')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "PermissionError") and not target.exists()
    r = run("open('inside.txt', 'w').write('x')\nimport os\nassert os.path.getsize('inside.txt') == 1", LIMITS)
    assert r.outcome == "passed", "its own directory is writable"


@needs_root
@pytest.mark.parametrize("change", ["os.chmod(P, 0o777)", "os.chown(P, 65534, 65534)", "os.utime(P, (0, 0))"])
def test_no_change_to_files_outside_its_directory(change):
    where = tempfile.mkdtemp()
    os.chmod(where, 0o755)
    path = os.path.join(where, "f")
    with open(path, "w") as f:
        f.write("x")
    before = os.stat(path)
    r = run(f"import os\nP = {path!r}\n{change}", LIMITS)
    after = os.stat(path)
    os.unlink(path)
    os.rmdir(where)
    assert (r.outcome, r.error_type) == ("error", "PermissionError")
    assert (after.st_mode, after.st_uid, after.st_mtime) == (before.st_mode, before.st_uid, before.st_mtime)


@needs_namespaces
def test_the_callers_environment_is_out_of_reach(monkeypatch):
    token = "hf_FakeTokenForTheSandboxTest123"
    monkeypatch.setenv("HF_TOKEN", token)
    program = (f"import os\nassert os.getppid() == 0 and os.getpid() == 1\n"
               "seen = [int(p) for p in os.listdir('/proc') if p.isdigit()]\nassert seen == [1], seen\n"
               f"assert not os.path.exists('/proc/{os.getpid()}')\nassert {token!r} not in str(os.environ)\n"
               "try:\n    mine = open('/proc/1/environ', 'rb').read()\nexcept PermissionError:\n    mine = b''\n"
               f"assert {token!r}.encode() not in mine")
    r = run(program, LIMITS)
    assert r.outcome == "passed", r.stderr


@needs_root
def test_no_capabilities_and_not_root():
    r = run("s = open('/proc/self/status').read()\nprint(s)\nimport os\n"
            "assert 'CapEff:\\t0000000000000000' in s and 'CapPrm:\\t0000000000000000' in s, s\n"
            "assert os.getuid() == os.geteuid() == 65534 and os.getgroups() == []", LIMITS)
    assert r.outcome == "passed", r.stderr


@needs_namespaces
def test_total_disk_writes_are_bounded():
    program = ("total = 0\nfor i in range(20):\n    try:\n        with open(f'{(\".\", \"/dev/shm\")[i % 2]}/f{i}', 'wb') as f:\n"
               "            for _ in range(15):\n                f.write(b'x' * 2**20)\n                total += 2**20\n"
               "    except OSError:\n        break\nprint(total)")
    r = run(program, LIMITS)
    assert r.outcome == "passed" and int(r.stdout) <= LIMITS.disk_mb * 2**20


@needs_namespaces
def test_multiprocessing_queues_work():
    r = run("import multiprocessing as mp\nq = mp.Queue()\np = mp.Process(target=q.put, args=(3,))\np.start()\n"
            "assert q.get(timeout=20) == 3\np.join()", LIMITS)
    assert r.outcome == "passed", r.stderr


@needs_namespaces
def test_sethostname_fails():
    before = socket.gethostname()
    r = run("import socket\nsocket.sethostname('pwned')", LIMITS)
    assert (r.outcome, r.error_type) == ("error", "PermissionError") and socket.gethostname() == before


def test_it_cannot_kill_its_caller():
    r = run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)", LIMITS)
    assert r.outcome == "error" and r.error_type in ("PermissionError", "ProcessLookupError")
    assert os.getpid() > 0  # and we are still here to assert it


def test_output_is_truncated_and_what_it_wrote_is_gone():
    r = run("import os\nopen('marker', 'w').write('x')\nprint(os.path.abspath('marker'))\nprint('x' * 100000)", LIMITS)
    assert r.outcome == "passed" and len(r.stdout) < 10000 and "[truncated]" in r.stdout
    assert not os.path.exists(r.stdout.splitlines()[0])


def test_runs_in_parallel():
    results = run_many([f"assert {i} % 2 == 0" for i in range(6)], LIMITS, workers=3)
    assert [r.outcome for r in results] == ["passed", "failed"] * 3


def test_cases_report_each_assert_and_cannot_be_skipped_by_exiting():
    solution = "def double(x):\n    return x * 2 if x < 3 else 0"
    cases = ["assert double(1) == 2", "assert double(2) == 4", "assert double(3) == 6", "assert double(nope) == 0"]
    r = run(solution, LIMITS, cases=cases)
    assert r.cases == [True, True, False, False] and (r.outcome, r.error_type) == ("failed", "AssertionError")
    assert run(solution, LIMITS, cases=cases[:2]).cases == [True, True]
    r = run(solution + "\nimport os\nos._exit(0)", LIMITS, cases=cases)
    assert (r.outcome, r.error_type, r.cases) == ("error", "EarlyExit", None)
    r = run(solution + "\nimport sys\nsys.exit(0)", LIMITS, cases=cases)
    assert (r.outcome, r.error_type, r.cases) == ("error", "SystemExit", [False] * 4)
    r = run(solution, LIMITS, cases=["import sys\nsys.exit(0)", *cases])
    assert r.cases == [False, True, True, False, False], "a case that exits fails, the others still run"
    r = run(solution, LIMITS, cases=["import os\nos._exit(0)", *cases])
    assert (r.outcome, r.cases) == ("error", None)
    r = run("import atexit, os\natexit.register(lambda: os._exit(0))\n" + solution, LIMITS, cases=cases)
    assert r.cases == [True, True, False, False]
    r = run("def double(:", LIMITS, cases=cases)
    assert (r.error_type, r.cases) == ("SyntaxError", [False] * 4)


def test_a_dead_worker_is_replaced():
    assert run("print(1)", LIMITS).outcome == "passed"
    with sandbox._pool._lock:
        workers = list(sandbox._pool._idle)
    for w in workers:
        os.kill(w.proc.pid, 9)  # killed from outside while idle
        w.proc.wait()
    assert [run("print(2)", LIMITS).outcome for _ in range(len(workers) + 1)] == ["passed"] * (len(workers) + 1)
    for w in workers:
        assert not os.path.exists(w.features["directory"]), "the dead worker's directory is removed"


@pytest.mark.skipif(not FEATURES["pids_cgroup"], reason="the pids cgroup is made by root; other users get RLIMIT_NPROC")
def test_no_cgroup_is_left_behind():
    cgroup = sandbox.protections()["pids_cgroup"]
    assert os.path.isdir(cgroup)
    sandbox.close()
    assert not os.path.exists(cgroup)


def test_process_limit_holds_and_leftovers_are_killed():
    program = ("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
               "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(60)\n        os._exit(0)\n"
               "    n += 1\nprint(n)")
    r = run(program, LIMITS)
    assert r.outcome == "passed" and int(r.stdout) < LIMITS.procs
    left = _sandboxed()
    assert left == [], [open(f"/proc/{p}/status").read()[:300] for p in left]


def test_workers_get_none_of_the_callers_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenForTheSandboxTest456")
    sandbox.close()  # the next run starts a worker now, with the token in our environment
    r = run("import os\nprint(sorted(os.environ))", LIMITS)
    assert r.stdout.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
def test_degrades_where_only_root_is_mapped(tmp_path):
    """In a user namespace that maps only root (a rootless container), runs cannot leave root nor
    get a PID namespace; what remains still decides outcomes from the record and confines writes."""
    target = tmp_path / "escaped.txt"
    programs = ["assert 1", "assert 0", "import os\nos._exit(0)", f"open({str(target)!r}, 'w')"]
    code = ("import json\nfrom qlcode.execution import sandbox\nL = sandbox.Limits(timeout_s=4, cpu_s=4, memory_mb=512)\n"
            f"runs = [sandbox.run(p, L) for p in {programs!r}]\n"
            "print(json.dumps([sandbox.protections(), [(r.outcome, r.error_type) for r in runs]]))")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    done = subprocess.run(["unshare", "-r", sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    features, outcomes = json.loads(done.stdout.splitlines()[-1])
    assert (features["nobody"], features["namespaces"]) == (False, False)
    assert outcomes == [["passed", None], ["failed", "AssertionError"], ["error", "EarlyExit"], ["error", "PermissionError"]]
    assert not target.exists()
