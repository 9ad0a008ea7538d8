"""The confinement primitives the sandbox's worker applies to each program's process, before it runs.

Each is a system call that survives everything the program may do afterwards:
- namespaces (root): mount, UTS, IPC and network for the worker; a fresh PID and mount namespace per
  program, with its own /proc (it sees only its own processes) and a size-limited tmpfs as its
  working directory (the total bytes it may write);
- leaving root: no supplementary groups, uid and gid `nobody`, hence no capabilities;
- resource limits: address space, CPU seconds, processes, file size, open files, no core dumps;
- Landlock (Linux >= 5.13): writes only beneath the working directory; TCP connect and bind denied
  (ABI >= 4); signals and abstract unix sockets scoped to the sandbox (ABI >= 6);
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
import tempfile

NOBODY = 65534

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
    for name, value in (("kernel/shmmax", memory_mb * 2**20), ("kernel/shmall", memory_mb * 2**20 // os.sysconf("SC_PAGE_SIZE")),
                        ("kernel/shmmni", 64), ("kernel/msgmni", 16), ("kernel/sem", "64 1024 32 16"),
                        ("fs/mqueue/queues_max", 16)):
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


def landlock(*writable: str) -> int:
    """Restrict writes to beneath `writable`, TCP, and signals; returns the Landlock ABI used (0 = unavailable)."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    fs = sum(bit for bit, since in FS_WRITE.items() if abi >= since)
    attr = RulesetAttr(fs, NET_TCP if abi >= 4 else 0, SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    for path, access in (*((w, fs) for w in writable), ("/dev/null", 1 << 1)):
        fd = os.open(path, os.O_PATH)
        rule = PathBeneath(access, fd)
        libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
        return 0
    os.close(ruleset)
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
