"""Who can reach the playground: a warning when it listens beyond this machine, and the logins
that Gradio's authentication checks (launch(auth=[(user, password), ...]))."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from qlcode.errors import QlcodeError


def logins(text: str, where: str) -> list[tuple[str, str]]:
    """USER:PASSWORD lines (blank lines and # comments skipped) as (user, password) pairs."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or not password:
            raise QlcodeError(f"{where} line {n}: expected USER:PASSWORD (a user name, a colon, a password)")
        pairs.append((user, password))
    if not pairs:
        raise QlcodeError(f"{where}: no USER:PASSWORD line; write one login per line")
    return pairs


def read_logins(path: Path) -> list[tuple[str, str]]:
    if not Path(path).is_file():
        raise QlcodeError(f"--auth {path}: no such file; write one USER:PASSWORD line per login in it")
    return logins(Path(path).read_text(encoding="utf-8"), str(path))


def local_only(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure(host: str, share: bool, auth: list | None, votes: Path) -> str | None:
    """The warning to print when others can reach the app, or None."""
    reach = [f"it listens on {host}, beyond this machine"] if not local_only(host) else []
    reach += ["--share opens a public link to it"] if share else []
    if not reach:
        return None
    if auth:
        return f"note: {' and '.join(reach)}; a login is required ({len(auth)} user{'s' if len(auth) > 1 else ''})."
    return (f"warning: {' and '.join(reach)}, with no login: anyone who reaches it can generate with the models and "
            f"vote, writing training data to {votes}. Require a login with --auth FILE (one USER:PASSWORD line per login).")
