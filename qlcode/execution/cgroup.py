"""The cgroup a sandbox worker's runs join, one run at a time: it bounds their processes and their memory in total.

Memory counts what RLIMIT_AS cannot see: tmpfs and /dev/shm pages, memfd, SysV shared memory and the
kernel's allocations made for them, over every process of the run, with no swap. cgroup v2 (one
directory: pids.max, memory.max, memory.swap.max, memory.events) or v1 (a directory per controller:
pids.max; memory.limit_in_bytes, memory.memsw.limit_in_bytes, memory.oom_control), made beneath the
worker's own cgroup so that the limits of whatever contains it still hold. Standard library only (the
worker is run by path).
"""

from __future__ import annotations

import errno
import os
import tempfile
import time

CONTROLLERS = ("pids", "memory")
PREFIX = "qlcode-sandbox-"
SHMEM_LEFT, SHMEM_WAIT_S = 16 << 20, 5.0  # after a run: shared memory it may still hold, and how long to wait
LEAF = "qlcode-processes"  # cgroup v2: where the processes of a cgroup that must delegate go (below)


def _own_cgroups() -> dict[str, str]:
    """Our cgroup's path per v1 controller, and under "" the v2 one."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, the cgroup path it shows, type, v1 controllers) of each cgroup file system."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], set(fields[sep + 3].split(","))
            if fstype in ("cgroup", "cgroup2"):
                found.append((fields[4], fields[3], fstype, options & set(CONTROLLERS)))
    return found


def _directory(mount: str, root: str, path: str) -> str | None:
    """Where the cgroup `path` is, under a mount that shows the subtree `root`; None when outside it."""
    if root == "/":
        return os.path.join(mount, path.lstrip("/"))
    if path != root and not path.startswith(root + "/"):
        return None
    return os.path.join(mount, path[len(root):].lstrip("/"))


def _write(directory: str, name: str, value: str) -> None:
    with open(os.path.join(directory, name), "w") as f:
        f.write(value)


def _read(directory: str, name: str) -> str:
    with open(os.path.join(directory, name)) as f:
        return f.read()


def _delegate(parent: str, wanted: list[str]) -> list[str]:
    """cgroup v2: enable `wanted` for the children of `parent`; the controllers that are.

    A cgroup that holds processes cannot hand a controller to its children (cgroup v2's rule: only the
    root may), so where that is what stops it, those processes are moved first into a leaf below it,
    where the limits they were under still hold."""
    def enable() -> None:
        _write(parent, "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    available = _read(parent, "cgroup.controllers").split()
    enabled = _read(parent, "cgroup.subtree_control").split()
    missing = [c for c in wanted if c in available and c not in enabled]
    if missing:
        try:
            enable()
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            leaf = os.path.join(parent, LEAF)
            os.makedirs(leaf, exist_ok=True)
            for _ in range(10):  # processes may fork while they are moved
                pids = _read(parent, "cgroup.procs").split()
                if not pids:
                    break
                for pid in pids:
                    try:
                        _write(leaf, "cgroup.procs", pid)
                    except ProcessLookupError:
                        pass
            enable()
    return [c for c in wanted if c in _read(parent, "cgroup.subtree_control").split()]


class RunCgroup:
    """A worker's cgroup (v2) or one per controller (v1), `directories` by controller; each run gets a fresh
    `run` cgroup below it, with its bounds and its own counters, removed when the run is over (memory a
    dying run still holds, a SysV segment its IPC namespace frees a moment later, never counts
    against the next run)."""

    RUN = "run"

    def __init__(self, directories: dict[str, str]) -> None:
        self.directories = directories
        self._oom_kills_before = 0  # a run cgroup that could not be removed is the next run's, counters and all
        self.v2 = len(set(directories.values())) == 1 and os.path.exists(
            os.path.join(next(iter(directories.values())), "cgroup.controllers"))

    @classmethod
    def make(cls) -> RunCgroup | None:
        """Beneath our own cgroup(s), as root; None where no pids nor memory controller can be had."""
        own, directories = _own_cgroups(), {}
        mounts = _mounts()
        for mount, root, fstype, controllers in mounts:  # v1 first: a controller bound to v1 is not in v2
            for name in controllers:
                parent = _directory(mount, root, own.get(name, "/"))
                if name not in directories and parent and os.path.isdir(parent):
                    try:
                        directories[name] = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
                    except OSError:
                        pass
        wanted = [c for c in CONTROLLERS if c not in directories]
        for mount, root, fstype, _ in mounts:
            parent = _directory(mount, root, own.get("", "/")) if fstype == "cgroup2" else None
            if wanted and parent and os.path.isdir(parent):
                try:
                    delegated = _delegate(parent, wanted)
                    if delegated:
                        group = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
                        directories.update({c: group for c in delegated})
                        _delegate(group, delegated)  # to its runs
                except OSError:
                    pass
                break
        return cls(directories) if directories else None

    @property
    def pids(self) -> str | None:
        return self.directories.get("pids")

    @property
    def memory(self) -> str | None:
        return self.directories.get("memory")

    def _runs(self) -> list[str]:
        return [os.path.join(d, self.RUN) for d in sorted(set(self.directories.values()))]

    def swap_bounded(self) -> bool:
        """Whether the memory bound includes swap (or there is no swap to use)."""
        if self.memory is None:
            return False
        if os.path.exists(os.path.join(self.memory, "memory.swap.max" if self.v2 else "memory.memsw.limit_in_bytes")):
            return True
        with open("/proc/meminfo") as f:
            return any(line.split()[:2] == ["SwapTotal:", "0"] for line in f)

    def start_run(self, procs: int, memory_mb: int) -> None:
        """Make the next run's cgroup(s) with its bounds: `procs` processes, `memory_mb` in all, no swap."""
        for run in self._runs():
            os.makedirs(run, exist_ok=True)  # there still when the last one could not be removed
        if self.pids:
            _write(os.path.join(self.pids, self.RUN), "pids.max", str(procs))
        self._oom_kills_before = self._oom_kill_count()
        if self.memory is None:
            return
        run, limit = os.path.join(self.memory, self.RUN), str(memory_mb * 2**20)
        if self.v2:
            _write(run, "memory.max", limit)
            if os.path.exists(os.path.join(run, "memory.swap.max")):
                _write(run, "memory.swap.max", "0")
            _write(run, "memory.oom.group", "1")  # the run dies as a whole
        elif os.path.exists(os.path.join(run, "memory.memsw.limit_in_bytes")):
            _write(run, "memory.memsw.limit_in_bytes", "-1")  # may not go below memory's
            _write(run, "memory.limit_in_bytes", limit)
            _write(run, "memory.memsw.limit_in_bytes", limit)
        else:
            _write(run, "memory.limit_in_bytes", limit)

    def join(self) -> None:
        """Move the calling process into the run's cgroup(s): what it and its children use from now on counts."""
        for run in self._runs():
            _write(run, "cgroup.procs", "0")

    def oom_kills(self) -> int:
        """How many of the run's processes the kernel killed at its memory bound."""
        return self._oom_kill_count() - self._oom_kills_before

    def _oom_kill_count(self) -> int:
        if self.memory is None:
            return 0
        run = os.path.join(self.memory, self.RUN)
        for line in _read(run, "memory.events" if self.v2 else "memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def processes(self) -> list[int]:
        return sorted({int(p) for run in self._runs() for p in _read(run, "cgroup.procs").split()})

    def end_run(self) -> None:
        """Remove the run's cgroup(s) once its processes are gone (a moment, for the last to be reaped) and its
        shared memory freed: a SysV segment goes with the IPC namespace, shortly after its last process (0.16 s
        for 1 GB here), and a worker must not start a run while the last one's memory is still held."""
        if self.memory:
            run, deadline = os.path.join(self.memory, self.RUN), time.monotonic() + SHMEM_WAIT_S
            while self._shmem(run) > SHMEM_LEFT and time.monotonic() < deadline:
                time.sleep(0.005)
        self._remove_runs()

    def _remove_runs(self) -> None:
        for run in self._runs():
            for _ in range(100):
                try:
                    os.rmdir(run)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)

    @staticmethod
    def _shmem(run: str) -> int:
        for line in _read(run, "memory.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "shmem":
                return int(value)
        return 0

    def remove(self) -> None:
        self._remove_runs()
        for directory in set(self.directories.values()):
            try:
                os.rmdir(directory)
            except OSError:
                pass
