"""Rate limiting for devices: a token bucket for bandwidth and one for operations.

This is the traffic cop for disks (and later NICs): a `RateLimiter` holds up to two `TokenBucket`s,
one counting bytes and one counting requests, so one guest cannot take a whole disk from the
others. The semantics are Firecracker's (its `TokenBucket` and `RateLimiter` API objects):

- A bucket has a `size` (tokens it holds when full), a `refill_time` (milliseconds to go from empty
  to full) and an optional `one_time_burst` (extra tokens available once, at start).
- A bucket starts full. The one-time burst is spent first and never refills with time.
- Refill is continuous: `size * elapsed / refill_time` tokens come back over `elapsed`, up to `size`.
- A size or refill time of 0 means "no limit", which is represented by having no bucket at all
  (`TokenBucket.create` returns None).
- A single request larger than `size` (after the burst) could never be granted by waiting, so it is
  granted at once and the bucket goes into debt: it grants nothing (not even 0 tokens) for
  `ratio * refill_time`, where `ratio` is (request - tokens in the bucket) / size (Firecracker's
  "overconsumption"). A bucket already in debt grants such a request once the debt is paid.

Where this differs from Firecracker's code, it is on purpose and stricter:

- The bucket refills on every call, not only when it runs short, so time spent full earns nothing
  (Firecracker's lazy refill can count time while the bucket was full and grant more than `size`
  in a moment).
- Accounting is exact: the budget is kept in units of 1/(refill time in ns) of a token, so no
  fraction of a token is lost or created by rounding; a wait is rounded up to the next nanosecond.
- The limiter checks both buckets before it takes from either, so a refused request takes nothing
  from either (Firecracker takes the op and gives it back when the bandwidth is short).
- A refused request reports exactly how long until it can be granted (Firecracker re-arms a fixed
  100 ms timer).
- Overconsumption is a debt on the bucket rather than a timer beside it, so it survives a snapshot.

Time comes from an injectable monotonic clock (a callable returning nanoseconds), so tests are
exact and never sleep. Every integer a user or a snapshot provides is checked: the errors are
`RateLimiterError`, a ValueError whose message starts with the name of the field.
"""

from __future__ import annotations

import enum
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Clock = Callable[[], int]

NS_PER_MS = 1_000_000
U64_MAX = 2**64 - 1
# Firecracker keeps the refill time in nanoseconds in a u64; a longer one (about 584 years) is refused.
MAX_REFILL_TIME_MS = U64_MAX // NS_PER_MS


class RateLimiterError(ValueError):
    """A rate limiter configuration or snapshot state was refused; the message names the field."""


class Reduction(enum.Enum):
    OK = "ok"                      # granted
    BLOCKED = "blocked"            # not granted: retry after wait_ns
    OVERCONSUMED = "overconsumed"  # granted, larger than the bucket: the bucket blocks for wait_ns


@dataclass(frozen=True, slots=True)
class Result:
    """What `TokenBucket.reduce` did.

    OK: the tokens were taken (wait_ns is 0). BLOCKED: nothing was taken, and the tokens will be
    there in wait_ns (if nothing else takes any). OVERCONSUMED: the tokens were taken and the
    bucket is in debt; it grants nothing more for wait_ns.
    """

    reduction: Reduction
    wait_ns: int = 0

    @property
    def granted(self) -> bool:
        return self.reduction is not Reduction.BLOCKED


_OK = Result(Reduction.OK)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_tokens(tokens: int, what: str) -> None:
    if isinstance(tokens, bool) or not isinstance(tokens, int):
        raise TypeError(f"{what} must be an int, not {type(tokens).__name__}")
    if not 0 <= tokens <= U64_MAX:
        raise ValueError(f"{what} must be in [0, 2**64 - 1], not {tokens}")


@dataclass(frozen=True)
class TokenBucketState:
    """A bucket in a snapshot: its configuration and where it stood.

    `budget` is in whole tokens (the fraction of a token refilled since is dropped) and is negative
    while the bucket is in debt after an overconsumption.
    """

    size: int
    refill_time: int              # ms
    one_time_burst: int           # as configured
    one_time_burst_left: int
    budget: int


@dataclass(frozen=True)
class RateLimiterState:
    """A rate limiter in a snapshot. A bucket that is None is not limited."""

    bandwidth: TokenBucketState | None
    ops: TokenBucketState | None


class TokenBucket:
    """One token bucket (Firecracker's semantics; see the module docstring).

    Not thread-safe by itself: a RateLimiter owns its buckets and serializes every use of them.
    """

    def __init__(self, size: int, refill_time_ms: int, one_time_burst: int = 0, *,
                 clock: Clock = time.monotonic_ns) -> None:
        _check_tokens(size, "size")
        _check_tokens(refill_time_ms, "refill_time_ms")
        _check_tokens(one_time_burst, "one_time_burst")
        if size == 0 or refill_time_ms == 0:
            raise ValueError("a TokenBucket needs a size and a refill time above 0 "
                             "(0 means no limit: use TokenBucket.create, which returns None)")
        if refill_time_ms > MAX_REFILL_TIME_MS:
            raise ValueError(f"refill_time_ms must be at most {MAX_REFILL_TIME_MS}, not {refill_time_ms}")
        self.size = size
        self.refill_time_ms = refill_time_ms
        self.one_time_burst = one_time_burst
        self.clock = clock
        # Budget in units of 1/refill_ns of a token: refilling for dt ns adds exactly dt * size.
        self._refill_ns = refill_time_ms * NS_PER_MS
        self._full = size * self._refill_ns
        self._credit = self._full
        self._burst_left = one_time_burst
        self._last = clock()

    @classmethod
    def create(cls, size: int, refill_time_ms: int, one_time_burst: int = 0, *,
               clock: Clock = time.monotonic_ns) -> TokenBucket | None:
        """A bucket, or None ("no limit") when size or refill time is 0, as Firecracker does."""
        if size == 0 or refill_time_ms == 0:
            return None
        return cls(size, refill_time_ms, one_time_burst, clock=clock)

    # ---- state, as of now

    def _refill(self, now: int) -> None:
        elapsed = now - self._last
        if elapsed <= 0:        # a clock that went back (or no time passed): nothing comes back
            return
        self._last = now
        if self._credit < self._full:
            self._credit = min(self._credit + elapsed * self.size, self._full)

    @property
    def budget(self) -> int:
        """Whole tokens in the bucket now, not counting the one-time burst (negative in debt)."""
        self._refill(self.clock())
        return self._credit // self._refill_ns

    @property
    def one_time_burst_left(self) -> int:
        return self._burst_left

    # ---- taking and giving back

    def _wait_ns(self, tokens: int, now: int) -> int:
        """Nanoseconds until `tokens` can be taken (0: now), taking nothing."""
        self._refill(now)
        need = max(0, tokens - self._burst_left)
        # A request larger than the bucket only waits for a debt to be paid off; while in debt, the
        # bucket grants nothing (not even 0 tokens).
        wanted = 0 if need > self.size else need * self._refill_ns
        if self._credit >= wanted:
            return 0
        return _ceil_div(wanted - self._credit, self.size)

    def _take(self, tokens: int) -> Result:
        """Take `tokens`, which _wait_ns has just found available."""
        if tokens <= self._burst_left:
            self._burst_left -= tokens
            return _OK
        need = tokens - self._burst_left
        self._burst_left = 0
        self._credit -= need * self._refill_ns
        if need > self.size:
            return Result(Reduction.OVERCONSUMED, _ceil_div(-self._credit, self.size))
        return _OK

    def _reduce_at(self, tokens: int, now: int) -> Result:
        wait = self._wait_ns(tokens, now)
        if wait:
            return Result(Reduction.BLOCKED, wait)
        return self._take(tokens)

    def reduce(self, tokens: int) -> Result:
        """Take `tokens`: from the one-time burst first, then from the budget.

        All or nothing: a BLOCKED request takes nothing and says when it could be granted.
        """
        _check_tokens(tokens, "tokens")
        return self._reduce_at(tokens, self.clock())

    def force_replenish(self, tokens: int) -> None:
        """Give back `tokens` taken before (a refund).

        While the one-time burst is not spent, the tokens were taken from it and go back to it (up
        to its configured size); otherwise they go to the budget (up to `size`), paying off a debt
        first.
        """
        _check_tokens(tokens, "tokens")
        self._refill(self.clock())
        if self._burst_left > 0:
            self._burst_left = min(self._burst_left + tokens, self.one_time_burst)
        else:
            self._credit = min(self._credit + tokens * self._refill_ns, self._full)

    # ---- snapshots

    def save(self) -> TokenBucketState:
        return TokenBucketState(size=self.size, refill_time=self.refill_time_ms,
                                one_time_burst=self.one_time_burst,
                                one_time_burst_left=self._burst_left, budget=self.budget)

    @classmethod
    def restore(cls, state: object, *, clock: Clock = time.monotonic_ns,
                field: str = "token_bucket") -> TokenBucket:
        """A bucket from a snapshot's state, checked as untrusted input (RateLimiterError)."""
        if not isinstance(state, TokenBucketState):
            raise RateLimiterError(f"{field}: expected a TokenBucketState, got {type(state).__name__}")
        size = _u64(state.size, f"{field}.size")
        refill_time = _u64(state.refill_time, f"{field}.refill_time")
        burst = _u64(state.one_time_burst, f"{field}.one_time_burst")
        burst_left = _u64(state.one_time_burst_left, f"{field}.one_time_burst_left")
        budget = _int(state.budget, f"{field}.budget")
        if size == 0:
            raise RateLimiterError(f"{field}.size: 0 in a saved bucket (an unlimited one is saved as None)")
        if refill_time == 0:
            raise RateLimiterError(f"{field}.refill_time: 0 in a saved bucket "
                                   "(an unlimited one is saved as None)")
        if refill_time > MAX_REFILL_TIME_MS:
            raise RateLimiterError(f"{field}.refill_time: {refill_time} ms is longer than "
                                   f"{MAX_REFILL_TIME_MS} ms")
        if burst_left > burst:
            raise RateLimiterError(f"{field}.one_time_burst_left: {burst_left} is more than "
                                   f"one_time_burst {burst}")
        if budget > size:
            raise RateLimiterError(f"{field}.budget: {budget} is more than size {size}")
        if burst_left > 0 and budget != size:
            # The burst is spent before the budget, and a refund goes back to the burst while it lasts.
            raise RateLimiterError(f"{field}.budget: {budget} with one-time burst left, where it can only "
                                   f"be size {size}")
        if budget < -U64_MAX:
            raise RateLimiterError(f"{field}.budget: {budget} is a debt larger than any request")
        bucket = cls(size, refill_time, burst, clock=clock)
        bucket._burst_left = burst_left
        bucket._credit = budget * bucket._refill_ns
        return bucket

    def config(self) -> dict[str, int]:
        """The bucket's configuration as Firecracker's TokenBucket object."""
        return {"size": self.size, "one_time_burst": self.one_time_burst, "refill_time": self.refill_time_ms}

    def __repr__(self) -> str:
        return (f"TokenBucket(size={self.size}, refill_time_ms={self.refill_time_ms}, "
                f"one_time_burst={self.one_time_burst}, burst_left={self._burst_left}, "
                f"credit={self._credit}/{self._refill_ns})")


class RateLimiter:
    """A bandwidth bucket (bytes) and an ops bucket (requests); either may be None (no limit).

    `consume(nbytes)` takes one op and `nbytes` of bandwidth together or not at all, and returns 0
    when granted or else the nanoseconds until it may retry. A refused request, or a granted one
    that overconsumed, blocks the limiter: until then every consume is refused (as Firecracker's
    device stops taking requests from its queue until its timer fires), which keeps requests in
    order. Thread-safe; the limiter owns its buckets.
    """

    def __init__(self, bandwidth: TokenBucket | None = None, ops: TokenBucket | None = None) -> None:
        buckets = [b for b in (bandwidth, ops) if b is not None]
        if len(buckets) == 2 and buckets[0].clock != buckets[1].clock:
            raise ValueError("the bandwidth and ops buckets of a RateLimiter must share one clock")
        self._bandwidth = bandwidth
        self._ops = ops
        self._clock: Clock | None = buckets[0].clock if buckets else None
        self._lock = threading.Lock()
        self._blocked_until: int | None = None
        self.throttled = 0   # consumes refused (metrics)

    # ---- construction from the user-facing forms

    @classmethod
    def per_second(cls, *, bps: int = 0, iops: int = 0, clock: Clock = time.monotonic_ns) -> RateLimiter:
        """The CLI's `bps=N` and `iops=N`: buckets of N tokens refilled in 1000 ms (0: no limit)."""
        for name, value in (("bps", bps), ("iops", iops)):
            _u64(value, name)
        return cls(TokenBucket.create(bps, 1000, clock=clock), TokenBucket.create(iops, 1000, clock=clock))

    @classmethod
    def parse_cli(cls, text: str, *, clock: Clock = time.monotonic_ns) -> RateLimiter:
        """Parse the CLI form: comma-separated `bps=N` and `iops=N`, each at most once."""
        values: dict[str, int] = {}
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise RateLimiterError(f"{item!r}: expected bps=N or iops=N")
            if key not in ("bps", "iops"):
                raise RateLimiterError(f"{key}: unknown rate limit (expected bps or iops)")
            if key in values:
                raise RateLimiterError(f"{key}: given twice")
            if not re.fullmatch(r"[0-9]+", value):
                raise RateLimiterError(f"{key}: {value!r} is not a whole number")
            number = int(value)
            if number > U64_MAX:
                raise RateLimiterError(f"{key}: {number} is larger than 2**64 - 1")
            values[key] = number
        return cls.per_second(clock=clock, **values)

    @classmethod
    def from_firecracker(cls, obj: object, *, clock: Clock = time.monotonic_ns,
                         field: str = "rate_limiter") -> RateLimiter:
        """Firecracker's RateLimiter API object: `{"bandwidth": TokenBucket, "ops": TokenBucket}`.

        Both keys are optional (null is the same as absent); a TokenBucket is `{"size", "refill_time"
        (ms), "one_time_burst" (optional)}`, non-negative integers. Unknown keys are refused.
        """
        if not isinstance(obj, Mapping):
            raise RateLimiterError(f"{field}: expected an object, got {_json_type(obj)}")
        _refuse_unknown(obj, ("bandwidth", "ops"), field)
        return cls(_bucket_from_firecracker(obj.get("bandwidth"), f"{field}.bandwidth", clock),
                   _bucket_from_firecracker(obj.get("ops"), f"{field}.ops", clock))

    def config(self) -> dict[str, dict[str, int]]:
        """The configuration as Firecracker's RateLimiter object (unlimited buckets left out)."""
        out = {}
        if self._bandwidth is not None:
            out["bandwidth"] = self._bandwidth.config()
        if self._ops is not None:
            out["ops"] = self._ops.config()
        return out

    # ---- use

    @property
    def enabled(self) -> bool:
        return self._clock is not None

    @property
    def bandwidth(self) -> TokenBucket | None:
        return self._bandwidth

    @property
    def ops(self) -> TokenBucket | None:
        return self._ops

    def consume(self, nbytes: int) -> int:
        """Take 1 op and `nbytes` of bandwidth for one request.

        Returns 0 when granted; otherwise nothing was taken (the op is given back when only the
        bandwidth is short) and the result is the nanoseconds until the request can be granted.
        """
        _check_tokens(nbytes, "nbytes")
        if self._clock is None:
            return 0
        with self._lock:
            now = self._clock()
            if self._blocked_until is not None:
                if now < self._blocked_until:
                    self.throttled += 1
                    return self._blocked_until - now
                self._blocked_until = None
            wait = 0
            for bucket, tokens in ((self._ops, 1), (self._bandwidth, nbytes)):
                if bucket is not None:
                    wait = max(wait, bucket._wait_ns(tokens, now))
            if wait:
                self.throttled += 1
                self._blocked_until = now + wait
                return wait
            for bucket, tokens in ((self._ops, 1), (self._bandwidth, nbytes)):
                if bucket is not None:
                    result = bucket._take(tokens)
                    if result.reduction is Reduction.OVERCONSUMED:   # only bandwidth can: ops take 1
                        self._blocked_until = now + result.wait_ns
            return 0

    def refund(self, nbytes: int, ops: int = 1) -> None:
        """Give back what a granted request took (say it failed before doing any I/O)."""
        _check_tokens(nbytes, "nbytes")
        _check_tokens(ops, "ops")
        with self._lock:
            if self._ops is not None:
                self._ops.force_replenish(ops)
            if self._bandwidth is not None:
                self._bandwidth.force_replenish(nbytes)

    @property
    def is_blocked(self) -> bool:
        """Whether a consume now would be refused because of an earlier refusal or overconsumption."""
        return self.blocked_ns > 0

    @property
    def blocked_ns(self) -> int:
        """Nanoseconds until the limiter takes requests again (0: it does now)."""
        with self._lock:
            if self._clock is None or self._blocked_until is None:
                return 0
            return max(0, self._blocked_until - self._clock())

    # ---- snapshots

    def save(self) -> RateLimiterState:
        """The buckets' state. How long the limiter stays blocked is not saved: a debt is in the
        bucket's budget, and a request refused for want of tokens is refused again on restore."""
        with self._lock:
            return RateLimiterState(
                bandwidth=self._bandwidth.save() if self._bandwidth is not None else None,
                ops=self._ops.save() if self._ops is not None else None)

    @classmethod
    def restore(cls, state: object, *, clock: Clock = time.monotonic_ns,
                field: str = "rate_limiter_state") -> RateLimiter:
        """A limiter from a snapshot's state, checked as untrusted input (RateLimiterError)."""
        if not isinstance(state, RateLimiterState):
            raise RateLimiterError(f"{field}: expected a RateLimiterState, got {type(state).__name__}")
        buckets = []
        for name in ("bandwidth", "ops"):
            saved = getattr(state, name)
            buckets.append(None if saved is None else
                           TokenBucket.restore(saved, clock=clock, field=f"{field}.{name}"))
        return cls(*buckets)

    def __repr__(self) -> str:
        return f"RateLimiter(bandwidth={self._bandwidth!r}, ops={self._ops!r}, throttled={self.throttled})"


# ---- validation helpers

def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, float):
        return f"a number that is not an integer ({value!r})"
    return type(value).__name__


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RateLimiterError(f"{field}: expected an integer, got {_json_type(value)}")
    return value


def _u64(value: object, field: str) -> int:
    number = _int(value, field)
    if number < 0:
        raise RateLimiterError(f"{field}: {number} is negative")
    if number > U64_MAX:
        raise RateLimiterError(f"{field}: {number} is larger than 2**64 - 1")
    return number


def _refuse_unknown(obj: Mapping[Any, Any], known: tuple[str, ...], field: str) -> None:
    for key in obj:
        if key not in known:
            raise RateLimiterError(f"{field}.{key}: unknown field (expected {', '.join(known)})")


def _bucket_from_firecracker(obj: object, field: str, clock: Clock) -> TokenBucket | None:
    if obj is None:
        return None
    if not isinstance(obj, Mapping):
        raise RateLimiterError(f"{field}: expected an object, got {_json_type(obj)}")
    _refuse_unknown(obj, ("size", "one_time_burst", "refill_time"), field)
    for required in ("size", "refill_time"):
        if required not in obj:
            raise RateLimiterError(f"{field}.{required}: missing")
    size = _u64(obj["size"], f"{field}.size")
    refill_time = _u64(obj["refill_time"], f"{field}.refill_time")
    burst_value = obj.get("one_time_burst")
    burst = 0 if burst_value is None else _u64(burst_value, f"{field}.one_time_burst")
    if refill_time > MAX_REFILL_TIME_MS:
        raise RateLimiterError(f"{field}.refill_time: {refill_time} ms is longer than "
                               f"{MAX_REFILL_TIME_MS} ms (about 584 years)")
    return TokenBucket.create(size, refill_time, burst, clock=clock)
