"""A warm sandbox worker: set up once, then fork a fresh, confined process per program.

    python -I worker.py      (requests: one JSON line each on stdin; replies: one JSON line each on stdout)

Starting an interpreter, importing the usual modules and making namespaces cost more than most
test programs take to run, so the worker does that once and forks a child per request. Each child
confines itself (jail.py) before the program runs: as root in a fresh PID and mount namespace with
its own /proc and a size-limited tmpfs as working directory, as user nobody, under resource
limits, Landlock and seccomp. When it ends or overruns, the worker kills it, and with it its PID
namespace, so nothing it started survives.

The program is trusted with nothing, including its exit: the harness in the child runs the program
(then each test case, each caught on its own) and only afterwards writes a record carrying a nonce
to a pipe. No record, no pass: exiting early (sys.exit, os._exit, atexit, a signal, a crash) is an
error, whatever the exit code. Exception names in the record are checked to be identifiers here.

A request with `steps` (judge.py's plan of a test) is judged outside: the child runs the program,
then each step in order, executing ("exec") or evaluating ("eval") it, and the record carries each
evaluated value as plain tagged data (`Encoder`), or the name of the exception it raised. The
verdict is decided by the caller from those values alone: whatever the program does in its
process, it can at most change the values it returns.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import linecache
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jail  # noqa: E402  (run by path in isolated mode: its directory is not on sys.path)
from cgroup import RunCgroup  # noqa: E402

sys.path.pop(0)

OUTPUT_LIMIT = 8192
RECORD_LIMIT = 1 << 20
SHM = "/dev/shm"
PREIMPORT = ("typing", "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
             "hashlib", "random", "statistics", "json", "fractions", "decimal", "datetime", "copy", "operator",
             "doctest")
ERROR_NAME_LIMIT = 64
VALUE_BYTES = RECORD_LIMIT * 3 // 4  # all the values of one run together, at most as JSON (the record is bounded)
NODE_BYTES = 16  # a node's tag and punctuation
VALUE_DEPTH = 100  # nesting of one value
PLAIN = (type(None), int, float, str, bytes, list, tuple, set, frozenset, dict)  # what Encoder sends
TRACEBACK_LIMIT = 30  # frames of a traceback printed (the innermost): a deep recursion has a million
FRAMES_PER_MB = 250  # recursion depth allowed per MB of the memory limit (memory runs out near 6000)


class Setup:
    """What this worker could set up; decided once, at start."""

    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self.base = tempfile.mkdtemp(prefix="qlcode-sandbox-")
        self.isolated = False  # per-run PID and mount namespaces, /proc, tmpfs working directory
        self.ipc_bounded = False  # SysV IPC limits written in each run's IPC namespace
        self.pid_ns = -1
        runtime = jail.runtime()  # all a program may read, besides its own directory: (path, Landlock access)
        paths = [path for path, _ in runtime]
        directories = [path for path in paths if os.path.isdir(path)]
        if self.root:
            try:
                jail.unshare(jail.CLONE_NEWNS | jail.CLONE_NEWUTS | jail.CLONE_NEWIPC | jail.CLONE_NEWNET)
                jail.mount("none", "/", None, jail.MS_REC | jail.MS_PRIVATE)
                jail.sethostname("sandbox")
                jail.expose(paths)
                self.pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
                self.new_pid_namespace()
                self.isolated = _succeeds(lambda: enter_run_namespaces(self.base, 1, None))
                self.new_pid_namespace()  # the probe's namespace died with it
                self.ipc_bounded = self.isolated and _succeeds(lambda: enter_run_namespaces(self.base, 1, 1))
                jail.setns(self.pid_ns, jail.CLONE_NEWPID)
            except OSError:
                pass
        else:
            try:
                jail.unshare(jail.CLONE_NEWNET)  # without root, only where user namespaces allow it
            except OSError:
                pass
        # not in a user namespace that maps only root, and Python's own files readable as nobody
        self.nobody = self.root and _succeeds(lambda: (jail.leave_root(), _readable(directories)))
        if self.nobody and not self.isolated:
            os.chmod(self.base, 0o711)  # nobody reaches its own directories below
        self.cgroup = RunCgroup.make() if self.root else None
        self.landlock_abi = jail.landlock_abi()
        self.runtime = list(zip(jail.open_paths(paths), (access for _, access in runtime))) if self.landlock_abi else []
        if self.landlock_abi and not _succeeds(lambda: jail.landlock(self.runtime, [self.base])):
            self.landlock_abi, self.runtime = 0, []  # rules this kernel refuses: said by protections(), not per run
        self.seccomp = _succeeds(jail.deny_sockets)

    def new_pid_namespace(self) -> None:
        """Our next child will be the init of a new PID namespace."""
        jail.setns(self.pid_ns, jail.CLONE_NEWPID)  # children of ours go back to our namespace,
        jail.unshare(jail.CLONE_NEWPID)              # then to a new one

    def features(self) -> dict:
        cgroup = self.cgroup or RunCgroup({})
        return {"root": self.root, "nobody": self.nobody, "namespaces": self.isolated, "ipc_bounded": self.ipc_bounded,
                "pids_cgroup": cgroup.pids, "memory_cgroup": cgroup.memory, "swap_bounded": cgroup.swap_bounded(),
                "directory": self.base, "landlock_abi": self.landlock_abi, "seccomp": self.seccomp}

    def close(self) -> None:
        if self.cgroup:
            self.cgroup.remove()
        _remove_tree(self.base)


def _succeeds(fn) -> bool:
    """Whether fn() runs without raising, tried in a throwaway fork."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        except BaseException:  # noqa: BLE001
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1] == 0


def _readable(directories: list[str]) -> None:
    """Raises unless each directory can be listed (by whoever we are now)."""
    for directory in directories:
        os.listdir(directory)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


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


def _own_processes() -> int:
    uid, n = os.getuid(), 0
    for p in os.listdir("/proc"):
        try:
            n += p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid
        except OSError:
            pass
    return n


def run_one(setup: Setup, request: dict) -> dict:
    """Fork, confine and run one program; wait at most its wall time; classify from the record alone."""
    limits = request["limits"]
    nonce = os.urandom(16).hex()
    workdir = setup.base
    if not setup.isolated:
        workdir = tempfile.mkdtemp(dir=setup.base)
        if setup.nobody:
            os.chown(workdir, jail.NOBODY, jail.NOBODY)
    if setup.cgroup:
        setup.cgroup.start_run(limits["procs"], limits["memory_mb"])
    # RLIMIT_NPROC counts every process of a user, and the kernel exempts root: the cgroup bounds root's runs
    nproc = None if setup.cgroup and setup.cgroup.pids else limits["procs"] + (0 if setup.root else _own_processes())
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if setup.isolated:
            setup.new_pid_namespace()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                child(setup, request, workdir, nproc, (out.fileno(), err.fileno(), write_end), nonce)
            finally:
                os._exit(125)
        os.close(write_end)
        timed_out = _wait(pid, limits["timeout_s"])
        if timed_out:
            os.kill(pid, signal.SIGKILL)  # as a PID namespace's init, its death kills all it started
        _, status, usage = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        # RLIMIT_CPU: SIGXCPU (fatal unless ignored, as a PID namespace's init does), SIGKILL a second later
        out_of_cpu = (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
                      and usage.ru_utime + usage.ru_stime >= limits["cpu_s"])
        if not setup.isolated:
            _sweep(pid, setup.cgroup)
        # the kernel killed a process of the run at the memory cgroup's bound (it counts what RLIMIT_AS does not)
        out_of_memory = setup.cgroup is not None and setup.cgroup.oom_kills() > 0
        if setup.cgroup:
            setup.cgroup.end_run()
        record = _record(read_end, nonce)
        stdout, stderr = _read(out), _read(err)
    if not setup.isolated:
        _remove_tree(workdir)
    returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    outcome, error_type, cases = classify(record, returncode, timed_out or out_of_cpu)
    if out_of_memory:
        outcome, error_type = "oom", None
    if record and "sandbox_error" in record:
        stderr += f"\nsandbox: {str(record['sandbox_error'])[:500]}"
    values = record.get("values") if record and isinstance(record.get("values"), list) else None
    return {"outcome": outcome, "error_type": error_type, "returncode": returncode, "stdout": stdout,
            "stderr": stderr, "seconds": seconds, "cases": cases, "values": values}


def _wait(pid: int, timeout: float) -> bool:
    """True when the child is still running after `timeout` seconds."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return not ready
    finally:
        os.close(fd)


def _sweep(pid: int, cgroup: RunCgroup | None) -> None:
    """Without namespaces: kill the run's process group and whatever is left in its cgroup."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is None:
        return
    for _ in range(100):  # a fork bomb may still be spawning while we sweep
        pids = cgroup.processes()
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _record(fd: int, nonce: str) -> dict | None:
    """The harness's record: the line carrying this run's nonce, or None."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) < RECORD_LIMIT:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # a line nested too deep for json is no record
            continue
        if isinstance(record, dict) and record.get("nonce") == nonce:
            return record
    return None


def _identifier(name: object) -> str:
    return name if isinstance(name, str) and name.isidentifier() and len(name) <= ERROR_NAME_LIMIT else "Exception"


def classify(record: dict | None, returncode: int, timed_out: bool) -> tuple[str, str | None, list[bool] | None]:
    """(outcome, error_type, per-case results). A pass needs the record the harness writes at the very end."""
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout", None, None
    if record is None:
        if returncode < 0:
            return "error", signal.Signals(-returncode).name, None
        return "error", "EarlyExit", None
    if "sandbox_error" in record:
        return "error", "SandboxError", None
    cases = record.get("cases")
    if cases is not None:
        cases = [c is True for c in cases] if isinstance(cases, list) else None
    error = record.get("error")
    if error is None:
        return "passed", None, cases
    error = _identifier(error)
    outcome = {"AssertionError": "failed", "MemoryError": "oom"}.get(error, "error")
    return outcome, error, cases


def enter_run_namespaces(workdir: str, disk_mb: int, memory_mb: int | None) -> None:
    """As the init of a fresh PID namespace: mount and IPC namespaces of its own (SysV IPC bounded by
    memory_mb, unless None: where /proc/sys cannot be written), a /proc that shows only this namespace's
    processes, and one tmpfs of disk_mb MB, at /dev/shm (multiprocessing's semaphores live there) with
    its `work` directory bind-mounted as the working directory."""
    jail.unshare(jail.CLONE_NEWNS | jail.CLONE_NEWIPC)
    jail.mount("proc", "/proc", "proc", jail.MS_NOSUID | jail.MS_NODEV | jail.MS_NOEXEC)
    if memory_mb is not None:
        jail.limit_ipc(memory_mb)
    jail.mount("tmpfs", SHM, "tmpfs", jail.MS_NOSUID | jail.MS_NODEV,
               f"size={disk_mb}m,mode=1777,uid={jail.NOBODY},gid={jail.NOBODY}")
    os.mkdir(f"{SHM}/work", 0o700)
    os.chown(f"{SHM}/work", jail.NOBODY, jail.NOBODY)
    jail.mount(f"{SHM}/work", workdir, None, jail.MS_BIND)


def child(setup: Setup, request: dict, workdir: str, nproc: int | None, fds: tuple[int, int, int], nonce: str) -> None:
    """Confine this process (we are its fresh fork), then run the program in it."""
    limits = request["limits"]
    out, err, channel = fds
    try:
        os.setsid()
        if setup.isolated:
            enter_run_namespaces(workdir, limits["disk_mb"], limits["memory_mb"] if setup.ipc_bounded else None)
        if setup.cgroup:
            setup.cgroup.join()
        # from here on it reads only the runtime, /proc, its directory and its /dev/shm; it writes only the last two
        if setup.landlock_abi:
            proc = (jail.open_paths(["/proc"])[0], jail.FS_READ | jail.FS_READ_DIR)
            jail.landlock([*setup.runtime, proc], [workdir, SHM] if setup.isolated else [workdir])
        null = os.open("/dev/null", os.O_RDWR)
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in (null, out, err, channel)]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        channel = 3
        os.closerange(4, 2**31 - 1)  # the worker's request and reply pipes among them
        os.chdir(workdir)
        jail.limit_resources(limits["memory_mb"], limits["cpu_s"], nproc)
        if setup.nobody:
            jail.leave_root()
        jail.die_with_parent(signal.SIGKILL)  # after leave_root, which clears it; the worker may be killed
        if setup.seccomp:
            jail.deny_sockets()
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"})
        tempfile.tempdir = None
    except BaseException as e:  # the program never runs; say why through the channel
        os.write(channel, (json.dumps({"nonce": nonce, "sandbox_error": f"{type(e).__name__}: {e}"}) + "\n").encode())
        raise
    cap_recursion(limits["memory_mb"] * FRAMES_PER_MB)
    harness(request["program"], request.get("cases"), 3, nonce, request.get("steps"))


def cap_recursion(depth: int) -> None:
    """Let sys.setrecursionlimit go no higher than the memory limit holds: CPython 3.11 keeps Python
    frames on the heap, and a runaway recursion that exhausts memory first then hangs while it
    unwinds (a timeout, not the crash it is); capped, it ends in RecursionError at once."""
    real = sys.setrecursionlimit

    def setrecursionlimit(limit: int) -> None:
        real(min(limit, depth))

    setrecursionlimit.__doc__ = real.__doc__
    sys.setrecursionlimit = setrecursionlimit


def harness(program: str, cases: list[str] | None, channel: int, nonce: str,
            steps: list[list[str]] | None = None) -> None:
    """Run the program, then each case or step in its namespace; write the record; exit before any atexit hook."""
    write, exit_, dumps, getpid, flush = os.write, os._exit, json.dumps, os.getpid, _flush  # before it can patch them
    me = getpid()
    main = types.ModuleType("__main__")
    main.__file__ = "program.py"
    sys.modules["__main__"] = main
    sys.argv = ["program.py"]
    linecache.cache["program.py"] = (len(program), None, program.splitlines(True), "program.py")
    error = _execute(program, "program.py", main.__dict__)
    results = values = None
    if cases is not None:
        results = []
        first_failure = None
        for i, case in enumerate(cases):  # once the program itself failed, no case can pass
            failure = _execute(case, f"case {i}", main.__dict__) if error is None else error
            results.append(failure is None)
            if first_failure is None:
                first_failure = failure
        error = first_failure
    if steps is not None:
        values = []
        encoder = Encoder()
        for kind, source in steps if error is None else ():
            if kind == "exec":
                error = _execute(source, "test", main.__dict__)
                if error is not None:  # as in the test script, nothing after it runs
                    break
            else:
                values.append(encoder.evaluate(source, main.__dict__, kind == "iter"))
    flush()
    if getpid() == me:  # a process the program forked does not report
        name = None if error is None else exception_name(error)
        write(channel, (dumps({"nonce": nonce, "error": name, "cases": results, "values": values}) + "\n").encode())
    exit_(0)


class TooBig(Exception):
    """The values outgrew what one record may carry."""


class Encoder:
    """Values as plain tagged data for the caller's strict decoder: ["none"], ["bool", b], ["int", hex],
    ["float", float.hex], ["str", s], ["bytes", hex], ["list"|"tuple"|"set", [items]], ["dict", [[k, v]...]];
    for a whole value, ["raise", exception name] or ["unsupported", type name]. Built-in types and their
    subclasses are read through the built-in type's own methods (an override cannot change what is
    read); anything else is unsupported. Whatever the program patches, this can only send values."""

    def __init__(self) -> None:
        self.bytes = 0

    def evaluate(self, source: str, namespace: dict, iterated: bool = False) -> list:
        """The value of source, encoded; `iterated`: the test iterates it (set(f(x))), so a generator or
        a view is sent as the list of what it yields, as the test would have seen it."""
        try:
            value = eval(compile(source, "test", "eval"), namespace)  # noqa: S307  in the sandboxed child
            if iterated and not issubclass(type(value), PLAIN):
                value = list(value)
        except BaseException as e:  # noqa: BLE001  the call's exception is its value
            _print_exception(e)
            return ["raise", exception_name(e)]
        try:
            return self.encode(value, 0)
        except TooBig:
            return ["unsupported", "too large"]
        except BaseException as e:  # noqa: BLE001  a hostile object (or a patched type) cannot be sent
            return ["unsupported", exception_name(e)]

    def encode(self, value: object, depth: int) -> list:
        self.bytes += NODE_BYTES
        if self.bytes > VALUE_BYTES or depth > VALUE_DEPTH:
            raise TooBig
        t = type(value)
        if value is None:
            return ["none"]
        if issubclass(t, bool):
            return ["bool", bool(int.__index__(value))]
        if issubclass(t, int):
            return ["int", self.sized(format(int.__index__(value), "x"), 1)]
        if issubclass(t, float):
            return ["float", float.hex(float.__float__(value))]
        if issubclass(t, str):
            return ["str", self.sized(str.__str__(value), 6)]
        if issubclass(t, bytes):
            return ["bytes", self.sized(bytes.hex(value), 1)]
        for base, tag in ((list, "list"), (tuple, "tuple"), (set, "set"), (frozenset, "set")):
            if issubclass(t, base):
                return [tag, [self.encode(v, depth + 1) for v in base.__iter__(value)]]
        if issubclass(t, dict):
            return ["dict", [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in dict.items(value)]]
        if t.__module__ == "numpy" and t.__name__ != "ndarray" and hasattr(value, "item"):  # numpy's scalars
            return self.encode(value.item(), depth + 1)
        return ["unsupported", t.__name__ if isinstance(t.__name__, str) else "?"]

    def sized(self, text: str, bytes_per_char: int) -> str:
        """text, counted at its longest as JSON (a character escaped as \\uXXXX takes 6 bytes)."""
        self.bytes += len(text) * bytes_per_char
        if self.bytes > VALUE_BYTES:
            raise TooBig
        return text


def _execute(source: str, filename: str, namespace: dict) -> BaseException | None:
    """Run source; the exception it raised (any, SystemExit included), printed to stderr like Python does."""
    try:
        exec(compile(source, filename, "exec"), namespace)
    except BaseException as e:  # noqa: BLE001  everything the program raises is its outcome
        _print_exception(e)
        return e
    return None


def _print_exception(e: BaseException) -> None:
    """To stderr, like Python does."""
    try:
        traceback.print_exception(type(e), e, _innermost(e.__traceback__, TRACEBACK_LIMIT))
    except BaseException:  # noqa: BLE001  a hostile __str__ must not stop the record
        pass


def _innermost(tb, n: int):
    """The last n entries of a traceback, below the harness's own frame (cheap on a deep recursion's)."""
    entries = []
    tb = tb.tb_next if tb is not None else None
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return entries[-n] if len(entries) >= n else (entries[0] if entries else None)


def exception_name(e: BaseException) -> str:
    """Its class's name where that is an identifier, else the nearest built-in exception's."""
    name = type(e).__name__
    if isinstance(name, str) and name.isidentifier() and len(name) <= ERROR_NAME_LIMIT:
        return name
    return next(c.__name__ for c in type(e).__mro__ if getattr(builtins, c.__name__, None) is c)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


def main() -> None:
    requests, replies = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    for name in PREIMPORT:
        __import__(name)
    setup = Setup()
    try:
        replies.write((json.dumps(setup.features()) + "\n").encode())
        replies.flush()
        for line in requests:
            reply = run_one(setup, json.loads(line))
            replies.write((json.dumps(reply) + "\n").encode())
            replies.flush()
    finally:
        setup.close()


if __name__ == "__main__":
    main()
