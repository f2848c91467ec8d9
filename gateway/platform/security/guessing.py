"""Failed credential checks: remembered for a short while, and limited per address and per API key id.

A guess at an API key's secret costs a scrypt (the point of a slow hash), so a crowd of guessers could hold every
worker thread and hundreds of MiB (scrypt's memory) and tell a known key id from an unknown one by the time taken.
So, per process:
- after `limit` failed checks within `window` seconds from one address, or for one API key id, further credentials
  needing a check are answered 429 with Retry-After, without a check (no scrypt, no read); a check under way counts
  as failed until it succeeds, so a crowd arriving at once gets no more than `limit` checks either; requests with
  the same credential share one check (gateway.platform.security.clients), so a real client's first burst counts as one;
- a credential that failed is remembered (by its SHA-256) for `window` seconds: sent again, it fails at once;
- a credential proven good earlier in this process (gateway.platform.security.clients' memo) still passes: a real client
  keeps working from an address or key id that guessers have blocked;
- a 429 is sent a second after the request (awaited on the event loop: no thread, no CPU), so that a guesser sending
  again at once (a loop ignoring Retry-After) costs the gateway one cheap refusal per second per connection.
The time comes from the injected clock (gateway.platform.clock). Each worker process keeps its own counts; `serve --workers N`
allows up to N times `limit` per window.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from gateway.platform.clock import Clock

__all__ = ["FailedChecks", "TooManyFailures"]

_MAX_TRACKED = 10_000  # addresses and key ids (and failed digests) remembered at most; the oldest are forgotten first


class TooManyFailures(Exception):
    """Too many failed credential checks from this address or for this key id: answer 429 with `retry_after`."""

    def __init__(self, retry_after: int, what: str, first: bool) -> None:
        super().__init__(f"too many failed credential checks for this {what}")
        self.retry_after = retry_after
        self.what = what
        self.first = first  # the first refusal of this window (audited; the rest are counted only)


@dataclass
class _Window:
    start: float
    failures: int
    refused: bool = False


class FailedChecks:
    """Fixed windows of failed checks per address and per key id, and the digests of credentials that failed."""

    def __init__(self, clock: Clock, limit: int, window_seconds: float, refusal_delay: float = 1.0) -> None:
        self.clock, self.limit, self.window = clock, limit, window_seconds
        self.refusal_delay = refusal_delay  # a 429 is sent this long after the request: a guesser's loop slows to its pace
        self._counts: OrderedDict[str, _Window] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()  # credential digest -> when it failed
        self._lock = threading.Lock()  # checks run in worker threads

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def check(self, address: str | None, key_id: str | None) -> None:
        """TooManyFailures when the address or the key id has had `limit` failures in its current window."""
        with self._lock:
            self._check(self._now(), address, key_id)

    def begin(self, address: str | None, key_id: str | None) -> None:
        """Before a slow check: `check`, then count it as failed until `succeeded` says otherwise."""
        now = self._now()
        with self._lock:
            self._check(now, address, key_id)
            for name in self._names(address, key_id):
                window = self._counts.pop(name, None)
                if window is None or now >= window.start + self.window:
                    window = _Window(now, 0)
                window.failures += 1
                self._counts[name] = window  # most recent last
            while len(self._counts) > _MAX_TRACKED:
                self._counts.popitem(last=False)

    def succeeded(self, address: str | None, key_id: str | None) -> None:
        """The check begun for these passed: not a failure after all."""
        with self._lock:
            for name in self._names(address, key_id):
                window = self._counts.get(name)
                if window is not None and window.failures > 0:
                    window.failures -= 1

    def _check(self, now: float, address: str | None, key_id: str | None) -> None:
        for what, name in (("address", f"address:{address}"), ("API key id", f"key:{key_id}")):
            window = self._counts.get(name)
            if window is not None and window.failures >= self.limit and now < window.start + self.window:
                first, window.refused = not window.refused, True
                raise TooManyFailures(max(1, math.ceil(window.start + self.window - now)), what, first)

    @staticmethod
    def _names(address: str | None, key_id: str | None) -> list[str]:
        return [name for name in (f"address:{address}" if address else "", f"key:{key_id}" if key_id else "") if name]

    def failed_before(self, digest: str) -> bool:
        """Whether this credential (by digest) failed within the window: then it fails again, unchecked."""
        now = self._now()
        with self._lock:
            when = self._failed.get(digest)
            return when is not None and now < when + self.window

    def failed(self, digest: str) -> None:
        """A check begun has failed (it stays counted): remember the credential's digest for the window."""
        now = self._now()
        with self._lock:
            self._failed.pop(digest, None)
            self._failed[digest] = now
            while len(self._failed) > _MAX_TRACKED:
                self._failed.popitem(last=False)
