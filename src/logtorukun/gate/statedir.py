"""The gate user's private state directory (concurrency slots, the policy cache).

Its own module so that both the policy loader and the slots can use it without
importing each other.
"""

from __future__ import annotations

import os
import stat

from .errors import Exit, GateError


def default_state_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime and runtime.startswith("/") else os.environ.get("TMPDIR", "/tmp")  # noqa: S108
    return os.path.join(base, f"logtorukun-gate-{os.getuid()}")


def private_dir(path: str) -> None:
    """Create `path` (0700) or check that it is a directory only this user can write."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise GateError(Exit.FAILED, f"cannot create state dir {path}: {exc.strerror}") from None
    st = os.lstat(path)
    # In a shared /tmp another user could have planted the directory or a link.
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise GateError(
            Exit.FAILED,
            f"state dir {path} is not a private directory of this user; "
            "set limits.state_dir in the policy",
        )
