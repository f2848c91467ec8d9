"""Failpoints: named places where a test can make this process die (SIGKILL) to prove crash safety.

`IAP_FAILPOINTS=outbox.after-send` kills the process the first time that point is reached. Unset in
production (the default): a failpoint is then a no-op. Used by tests/test_outbox_crash.py.
"""

from __future__ import annotations

import os
import signal

__all__ = ["failpoint"]


def failpoint(name: str) -> None:
    if name in (os.environ.get("IAP_FAILPOINTS") or "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)
