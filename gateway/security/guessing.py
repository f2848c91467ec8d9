"""Failed credential checks: remembered for a short while, and limited per address and per API key id.

A guess at an API key's secret costs a scrypt (the point of a slow hash), so a crowd of guessers could hold every
worker thread and hundreds of MiB (scrypt's memory) and tell a known key id from an unknown one by the time taken.
So, per process:
- after `limit` failed checks within `window` seconds from one address, or for one API key id, further credentials
  needing a check are answered 429 with Retry-After, without a check (no scrypt, no read);
- a credential that failed is remembered (by its SHA-256) for `window` seconds: sent again, it fails at once;
- a credential proven good earlier in this process (gateway.security.clients' memo) still passes: a real client
  keeps working from an address or key id that guessers have blocked.
The time comes from the injected clock (gateway.clock). Each worker process keeps its own counts; `serve --workers N`
allows up to N times `limit` per window.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from gateway.clock import Clock

__all__ = ["FailedChecks", "TooManyFailures"]

_MAX_TRACKED = 10_000  # addresses and key ids (and failed digests) remembered at most; the oldest are forgotten first


class TooManyFailures(Exception):
    """Too many failed credential checks from this address or for this key id: answer 429 with `retry_after`."""

    def __init__(self, retry_after: int, what: str) -> None:
        super().__init__(f"too many failed credential checks for this {what}")
        self.retry_after = retry_after
        self.what = what


@dataclass
class _Window:
    start: float
    failures: int


class FailedChecks:
    """Fixed windows of failed checks per address and per key id, and the digests of credentials that failed."""

    def __init__(self, clock: Clock, limit: int, window_seconds: float) -> None:
        self.clock, self.limit, self.window = clock, limit, window_seconds
        self._counts: OrderedDict[str, _Window] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()  # credential digest -> when it failed
        self._lock = threading.Lock()  # checks run in worker threads

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def check(self, address: str | None, key_id: str | None) -> None:
        """TooManyFailures when the address or the key id has had `limit` failures in its current window."""
        now = self._now()
        with self._lock:
            for what, name in (("address", address), ("API key id", key_id)):
                if name is None:
                    continue
                window = self._counts.get(f"{what}:{name}")
                if window is not None and window.failures >= self.limit and now < window.start + self.window:
                    raise TooManyFailures(max(1, math.ceil(window.start + self.window - now)), what)

    def failed_before(self, digest: str) -> bool:
        """Whether this credential (by digest) failed within the window: then it fails again, unchecked."""
        now = self._now()
        with self._lock:
            when = self._failed.get(digest)
            return when is not None and now < when + self.window

    def failed(self, address: str | None, key_id: str | None, digest: str) -> None:
        """Count one failed check against the address and the key id, and remember the credential's digest."""
        now = self._now()
        with self._lock:
            for name in (f"address:{address}" if address else None, f"API key id:{key_id}" if key_id else None):
                if name is None:
                    continue
                window = self._counts.pop(name, None)
                if window is None or now >= window.start + self.window:
                    window = _Window(now, 0)
                window.failures += 1
                self._counts[name] = window  # most recent last
            self._failed.pop(digest, None)
            self._failed[digest] = now
            for table in (self._counts, self._failed):
                while len(table) > _MAX_TRACKED:
                    table.popitem(last=False)
