"""Lock the current process down, then exec the untrusted program: the sandbox's inner half.

    python -I jail.py --workdir DIR --memory-mb M --cpu-s S --procs P [--uid U] -- program.py

Everything here survives execve, so the program inherits it:
- resource limits: address space, CPU seconds, processes, file size, open files, no core dumps;
- a fresh network namespace with no interface up (when we may create one: root, or user namespaces);
- Landlock (Linux >= 5.13): writes only beneath the working directory; TCP connect and bind denied
  (ABI >= 4); signals and abstract unix sockets scoped to the sandbox (ABI >= 6), so the program
  cannot signal its parent;
- a process limit: the pids cgroup the caller made (root), or RLIMIT_NPROC (other users; the kernel
  exempts root from it).
It imports nothing heavy: it runs before every program.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import sys

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
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock(workdir: str) -> int:
    """Restrict writes to workdir, TCP, and signals; returns the Landlock ABI used (0 = unavailable)."""
    abi = libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    if abi <= 0:
        return 0
    fs = sum(bit for bit, since in FS_WRITE.items() if abi >= since)
    attr = RulesetAttr(fs, NET_TCP if abi >= 4 else 0, SCOPES if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    for path, access in ((workdir, fs), ("/dev/null", 1 << 1)):
        fd = os.open(path, os.O_PATH)
        rule = PathBeneath(access, fd)
        libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) != 0:
        return 0
    os.close(ruleset)
    return abi


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--memory-mb", type=int, required=True)
    ap.add_argument("--cpu-s", type=int, required=True)
    ap.add_argument("--procs", type=int, required=True)
    ap.add_argument("--cgroup", help="a pids cgroup directory to join (made by the caller)")
    ap.add_argument("program", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    program = a.program[1:] if a.program[:1] == ["--"] else a.program

    libc.unshare(CLONE_NEWNET)  # fails quietly where not permitted; Landlock still denies TCP
    if a.cgroup:
        with open(os.path.join(a.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    # RLIMIT_NPROC counts every process of this user, so it is set above the ones already running
    procs = a.procs + sum(1 for p in os.listdir("/proc") if p.isdigit() and _owned(p))
    mem = a.memory_mb * 2**20
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, a.cpu_s), (resource.RLIMIT_NPROC, procs),
                       (resource.RLIMIT_FSIZE, 16 * 2**20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    landlock(a.workdir)
    os.execv(sys.executable, [sys.executable, "-I", *program])


def _owned(pid: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


if __name__ == "__main__":
    main()
