"""Rate limits: one token bucket per credential (per client address for anonymous calls).

A bucket holds at most `burst` tokens and refills at `rate` per second; each call takes one. A call that
finds the bucket empty is refused with the time until a token is back, which the doors send as
`Retry-After` (HTTP) or a `google.rpc.RetryInfo` detail (gRPC). Buckets idle long enough to be full again
are dropped, so the table stays as small as the set of active callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


@dataclass
class _Bucket:
    tokens: float
    updated_at: float
    # When the bucket will be full again; a bucket past it can be forgotten without giving anything away.
    full_at: float


@dataclass
class RateLimiter:
    clock: Callable[[], float] = time.monotonic
    # Sweep idle buckets after this many new buckets.
    sweep_every: int = 10_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _created: int = 0

    def take(self, key: str, rate: Rate) -> float:
        """Take a token for `key`: 0.0 when allowed, else the seconds to wait before one is available."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._created += 1
            if self._created % self.sweep_every == 0:
                self._sweep(now)
            bucket = _Bucket(tokens=rate.burst, updated_at=now, full_at=now)
            self._buckets[key] = bucket
        else:
            bucket.tokens = min(rate.burst, bucket.tokens + (now - bucket.updated_at) * rate.per_second)
            bucket.updated_at = now
        if bucket.tokens < 1.0:
            return (1.0 - bucket.tokens) / rate.per_second
        bucket.tokens -= 1.0
        bucket.full_at = now + (rate.burst - bucket.tokens) / rate.per_second
        return 0.0

    def _sweep(self, now: float) -> None:
        idle = [key for key, bucket in self._buckets.items() if now >= bucket.full_at]
        for key in idle:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)
