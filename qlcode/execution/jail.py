"""The confinement primitives the sandbox's worker applies to each program's process, before it runs.

Each is a system call that survives everything the program may do afterwards:
- namespaces (root): mount, UTS, IPC and network for the worker; a fresh PID, mount and IPC namespace
  per program, with its own /proc (it sees only its own processes), bounded SysV IPC and a
  size-limited tmpfs as its working directory (the total bytes it may write);
- leaving root: no supplementary groups, uid and gid `nobody`, hence no capabilities;
- resource limits: address space, CPU seconds, processes, file size, open files, no core dumps
  (cgroup.py bounds a run's processes and memory in total);
- Landlock (Linux >= 5.13): reads only the Python runtime (standard library, interpreter, system
  libraries), /proc and its own directories, writes only beneath the latter; TCP connect and bind
  denied (ABI >= 4); signals and abstract unix sockets scoped to the sandbox (ABI >= 6);
- seccomp: no sockets (so no connection to a unix socket anywhere on the host, nor UDP where there
  is no network namespace) and no io_uring (which could open one without the socket call).
Standard library only: the worker that imports it is run by path, before any program.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import shutil
import site
import sys
import sysconfig
import tempfile

NOBODY = 65534
PACKAGE_DIRS = ("site-packages", "dist-packages")
SYSTEM_LIBRARIES = ("/lib/", "/usr/lib/", "/lib64/", "/usr/lib64/")
# installed packages a program may import besides the standard library: numerical code (benchmarks' and
# models' answers use it); only these directories of the package folders are readable, nothing else there
PROGRAM_PACKAGES = ("numpy", "numpy.libs")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/usr/share/zoneinfo", "/usr/bin", "/bin",
                "/sys/devices/system/cpu", "/dev/zero", "/dev/urandom", "/dev/random")

# Landlock constants (include/uapi/linux/landlock.h)
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
FS_WRITE = {  # access right bit: minimal ABI
    1 << 1: 1,   # WRITE_FILE
    1 << 4: 1,   # REMOVE_DIR
    1 << 5: 1,   # REMOVE_FILE
    1 << 6: 1,   # MAKE_CHAR
    1 << 7: 1,   # MAKE_DIR
    1 << 8: 1,   # MAKE_REG
    1 << 9: 1,   # MAKE_SOCK
    1 << 10: 1,  # MAKE_FIFO
    1 << 11: 1,  # MAKE_BLOCK
    1 << 12: 1,  # MAKE_SYM
    1 << 13: 2,  # REFER
    1 << 14: 3,  # TRUNCATE
}
FS_READ = (1 << 0) | (1 << 2)  # EXECUTE | READ_FILE
FS_READ_DIR = 1 << 3
NET_TCP = (1 << 0) | (1 << 1)  # BIND_TCP | CONNECT_TCP, ABI 4
SCOPES = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET | SIGNAL, ABI 6
PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, PR_SET_SECCOMP = 38, 1, 22
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 0x4000, 1 << 18
MNT_DETACH = 2

# seccomp: (audit arch, socket, io_uring_setup, io_uring_enter, io_uring_register) per machine
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425, 426, 427), "aarch64": (0xC00000B7, 198, 425, 426, 427)}
X32_BIT = 0x40000000  # x86_64's x32 ABI numbers: denied, so no second socket() number
EPERM = 1

libc = ctypes.CDLL(None, use_errno=True)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def setns(fd: int, flags: int) -> None:
    _check(libc.setns(fd, flags), "setns")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), f"mount {target}")


def expose(paths: list[str], uid: int = NOBODY) -> None:
    """Make `paths` reachable for `uid` in our (private) mount namespace.

    A directory on the way that others may not enter (root's 0700 home holding the Python
    installation) is covered by an empty tmpfs into which only the entries on the way to `paths`
    are bind-mounted back: what else it held stays hidden.
    """
    for _ in range(8):  # each pass opens one more level
        blocked: dict[str, set[str]] = {}
        for path in paths:
            parts = os.path.realpath(path).split("/")[1:]
            for depth in range(len(parts) - 1):
                parent = "/" + "/".join(parts[:depth])
                if not os.stat(parent).st_mode & 0o001:
                    blocked.setdefault(parent, set()).add(parts[depth])
                    break
        if not blocked:
            return
        stage = tempfile.mkdtemp(prefix="qlcode-sandbox-stage-")
        for parent, names in blocked.items():
            for i, name in enumerate(sorted(names)):
                src, tmp = os.path.join(parent, name), os.path.join(stage, f"{len(parent)}-{i}")
                os.mkdir(tmp) if os.path.isdir(src) else open(tmp, "w").close()
                mount(src, tmp, None, MS_BIND | MS_REC)
            mount("tmpfs", parent, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
            for i, name in enumerate(sorted(names)):
                src, tmp = os.path.join(parent, name), os.path.join(stage, f"{len(parent)}-{i}")
                os.mkdir(src) if os.path.isdir(tmp) else open(src, "w").close()
                mount(tmp, src, None, MS_BIND | MS_REC)
                _check(libc.umount2(tmp.encode(), MNT_DETACH), f"umount {tmp}")
        shutil.rmtree(stage, ignore_errors=True)


def limit_ipc(memory_mb: int) -> None:
    """In a fresh IPC namespace (whose defaults are unlimited): SysV shared memory up to `memory_mb` in all,
    few segments, message queues and semaphore sets. A memory cgroup counts these too; this bounds them
    where there is none."""
    shm = memory_mb * 2**20
    for name, value in (("kernel/shmmax", shm), ("kernel/shmall", shm // os.sysconf("SC_PAGE_SIZE")), ("kernel/shmmni", 64),
                        ("kernel/msgmni", 16), ("kernel/sem", "64 1024 32 16"), ("fs/mqueue/queues_max", 16)):
        with open(f"/proc/sys/{name}", "w") as f:
            f.write(str(value))


def sethostname(name: str) -> None:
    _check(libc.sethostname(name.encode(), len(name)), "sethostname")


def die_with_parent(sig: int) -> None:
    libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def limit_resources(memory_mb: int, cpu_s: int, nproc: int | None) -> None:
    """Address space, CPU seconds, file size, open files, no core dumps; processes where `nproc` is given.

    CPU: SIGXCPU at `cpu_s` (a PID namespace's init ignores it, like any signal it does not handle), SIGKILL a
    second later. The kernel decides on tick-sampled CPU time, which may run ahead of the precise time wait4
    reports (measured here, soft and hard limit equal: killed at 0.976 s of a 1 s limit, so a SIGKILL at
    "less than the limit" read as a crash); with the hard limit a second above, the time reported at the
    SIGKILL is well past `cpu_s`."""
    limits = [(resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_FSIZE, 16 * 2**20),
              (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)]
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, nproc))
    for res, value in limits:
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


def leave_root(uid: int = NOBODY) -> None:
    """Become `uid` with no groups: the kernel clears every capability when root changes its uids."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none."""
    return max(0, libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION))


def _package_dirs() -> set[str]:
    """Where installed packages live: the venv's, the base interpreter's, the system's, the user's."""
    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    candidates = [*site.getsitepackages(), site.getusersitepackages(), base["purelib"], base["platlib"],
                  *(p for p in sys.path if os.path.basename(p) in PACKAGE_DIRS)]
    return {os.path.realpath(p) for p in candidates if os.path.isdir(p)}


def _without(directory: str, hidden: set[str]) -> list[str]:
    """`directory`; where one of `hidden` lies beneath it, its entries instead, all but that one's way."""
    if not any(h.startswith(directory + "/") for h in hidden):
        return [directory]
    kept = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if path not in hidden:
            kept += _without(path, hidden) if os.path.isdir(path) and not os.path.islink(path) else [path]
    return kept


def runtime() -> list[tuple[str, int]]:
    """What a program may read, as (path, Landlock access) pairs: the standard library (its directory listed, for
    a fresh interpreter's imports), the interpreter, the shared libraries it maps (their system directories
    whole, for the extensions a program may import), a few system files; never a package directory within
    them; of the installed packages, only PROGRAM_PACKAGES (numpy). Not the project, its data, other installed
    packages, the user's home or caches: those stay unread."""
    hidden = _package_dirs()
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])  # the base interpreter's, also in a venv
    paths = [*_without(stdlib, hidden), *(p for p in sys.path if p.endswith(".zip"))]
    with open("/proc/self/maps") as f:
        mapped = {os.path.realpath(line.split(maxsplit=5)[5].strip()) for line in f if line.count(" /")}
    for path in mapped:
        directory = os.path.dirname(path)
        paths += _without(directory, hidden) if directory.startswith(SYSTEM_LIBRARIES) else [path]
    # a venv's pyvenv.cfg tells a fresh interpreter that it runs in one (unreadable, it stops at start)
    paths += [os.path.realpath(sys.executable), os.path.join(sys.prefix, "pyvenv.cfg"), *SYSTEM_FILES]
    paths += [os.path.join(d, name) for d in hidden for name in PROGRAM_PACKAGES if os.path.isdir(os.path.join(d, name))]
    rules = [(p, FS_READ | (FS_READ_DIR if os.path.isdir(p) else 0)) for p in sorted(set(paths)) if os.path.exists(p)]
    return [(stdlib, FS_READ_DIR), *rules]


def open_paths(paths: list[str]) -> list[int]:
    """O_PATH descriptors of `paths` (the worker opens the runtime's once, for each run's Landlock rules)."""
    return [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in paths]


def landlock(readable: list[tuple[int, int]], writable: list[str]) -> int:
    """Allow reads and executions only as `readable` says ((O_PATH descriptor, access) pairs) and beneath
    `writable`, writes only beneath `writable` (and /dev/null); deny TCP (ABI >= 4), scope signals and
    abstract unix sockets to the sandbox (ABI >= 6); returns the Landlock ABI used (0 = unavailable).

    Made per run, after its mounts: a rule on a directory does not cover what is later mounted on it
    (Landlock skips a mount point it walks up through), so a run's tmpfs and /proc are opened after."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    write = sum(bit for bit, since in FS_WRITE.items() if abi >= since)
    attr = RulesetAttr(write | FS_READ | FS_READ_DIR, NET_TCP if abi >= 4 else 0, SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    opened = open_paths([*writable, "/dev/null"])
    rules = [*readable, *((fd, write | FS_READ | FS_READ_DIR) for fd in opened[:-1])]
    rules.append((opened[-1], FS_READ | (1 << 1) | (1 << 14 if abi >= 3 else 0)))  # /dev/null: read, write, truncate
    try:
        for fd, access in rules:
            _check(libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(PathBeneath(access, fd)), 0),
                   "landlock_add_rule")
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        _check(libc.syscall(SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        for fd in (*opened, ruleset):
            os.close(fd)
    return abi


def deny_sockets() -> None:
    """A seccomp filter: socket() (every family: unix, inet, netlink...) and io_uring fail with EPERM;
    socketpair() still works. OSError where unsupported."""
    arch = SECCOMP_ARCH.get(platform.machine())
    if arch is None:
        raise OSError(f"no seccomp filter for {platform.machine()}")
    audit_arch, nr_socket, *nr_uring = arch
    ld_w_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | EPERM  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
    prog = [
        (ld_w_abs, 0, 0, 4), (jeq, 1, 0, audit_arch), (ret, 0, 0, deny),  # another ABI: nothing allowed
        (ld_w_abs, 0, 0, 0), (jge, 0, 1, X32_BIT), (ret, 0, 0, deny),     # the syscall number; no x32
        (jeq, 3, 0, nr_socket), (jeq, 2, 0, nr_uring[0]), (jeq, 1, 0, nr_uring[1]), (jeq, 0, 1, nr_uring[2]),
        (ret, 0, 0, deny),
        (ret, 0, 0, allow),
    ]
    filters = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
    fprog = SockFprog(len(prog), filters)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp")
