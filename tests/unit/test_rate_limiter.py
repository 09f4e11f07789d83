"""Token buckets and rate limiters (Firecracker's semantics), on a fake clock: exact, no sleeping.

Expected values are worked out from the semantics (size, refill time, one-time burst), not read off
the code: a bucket of `size` tokens refilled in `refill_time` ms gains size / refill_time tokens per
ms, continuously, up to `size`.
"""

import copy
import dataclasses
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkit.devices.rate_limiter import (
    MAX_REFILL_TIME_MS,
    U64_MAX,
    RateLimiter,
    RateLimiterError,
    RateLimiterState,
    Reduction,
    TokenBucket,
    TokenBucketState,
)

MS = 1_000_000
FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None)


class FakeClock:
    def __init__(self, now: int = 0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


@pytest.fixture
def clock():
    return FakeClock(now=123_456_789)   # not 0: nothing may assume the clock starts there


# ---- TokenBucket: refill


def test_a_bucket_starts_full_and_refills_continuously(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    assert bucket.budget == 1000
    assert bucket.reduce(1000).reduction is Reduction.OK
    assert bucket.budget == 0
    clock.advance(250 * MS)
    assert bucket.budget == 250                  # a quarter of the refill time: a quarter of the size
    assert bucket.reduce(250).reduction is Reduction.OK
    assert bucket.reduce(1).reduction is Reduction.BLOCKED


def test_refill_is_capped_at_size(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(600)
    clock.advance(5000 * MS)
    assert bucket.budget == 1000
    assert bucket.reduce(1000).granted
    result = bucket.reduce(1)
    assert (result.reduction, result.wait_ns) == (Reduction.BLOCKED, 1 * MS)   # 1 token per ms


def test_fractions_of_a_token_are_neither_lost_nor_made(clock):
    bucket = TokenBucket(3, 1000, clock=clock)   # one token every 333.33... ms
    bucket.reduce(3)
    for _ in range(3333):                        # 0.1 ms at a time: each step earns 0.0003 token
        clock.advance(MS // 10)
    assert bucket.budget == 0                    # 333.3 ms: 0.9999 of a token
    clock.advance(MS // 10)
    assert bucket.budget == 1                    # 333.4 ms: 1.0002
    assert bucket.reduce(1).granted
    clock.advance(333_333_333)                   # 0.0002 carried over + 0.999999999
    assert bucket.budget == 1


def test_time_spent_full_earns_nothing(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    clock.advance(900 * MS)                      # full all along: nothing to refill
    assert bucket.reduce(1000).granted
    result = bucket.reduce(1)                    # Firecracker's lazy refill would find 900 here
    assert (result.reduction, result.wait_ns) == (Reduction.BLOCKED, 1 * MS)


def test_the_reported_wait_is_exact(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(1000)
    result = bucket.reduce(500)
    assert (result.reduction, result.wait_ns) == (Reduction.BLOCKED, 500 * MS)
    assert bucket.budget == 0                    # a refused request takes nothing
    clock.advance(500 * MS - 1)
    assert bucket.reduce(500).wait_ns == 1
    clock.advance(1)
    assert bucket.reduce(500).reduction is Reduction.OK
    assert bucket.budget == 0


def test_a_wait_is_rounded_up_to_the_next_nanosecond(clock):
    bucket = TokenBucket(3, 1, clock=clock)      # a token every 333_333.33 ns
    bucket.reduce(3)
    assert bucket.reduce(1).wait_ns == 333_334
    assert bucket.reduce(2).wait_ns == 666_667


def test_a_clock_that_goes_back_refills_nothing(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(1000)
    clock.advance(-10 * MS)
    assert bucket.budget == 0
    clock.advance(15 * MS)                       # 5 ms after the last time seen
    assert bucket.budget == 5


# ---- TokenBucket: one-time burst


def test_the_one_time_burst_is_spent_first_and_never_refills(clock):
    bucket = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    assert bucket.reduce(30).granted
    assert (bucket.one_time_burst_left, bucket.budget) == (20, 100)
    assert bucket.reduce(120).granted            # 20 from the burst, 100 from the budget
    assert (bucket.one_time_burst_left, bucket.budget) == (0, 0)
    result = bucket.reduce(1)
    assert (result.reduction, result.wait_ns) == (Reduction.BLOCKED, 10 * MS)   # 100 per second
    clock.advance(3600_000 * MS)
    assert (bucket.one_time_burst_left, bucket.budget) == (0, 100)


def test_size_plus_burst_is_what_a_full_bucket_grants_at_once(clock):
    bucket = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    assert bucket.reduce(150).reduction is Reduction.OK
    assert bucket.reduce(1).reduction is Reduction.BLOCKED


# ---- TokenBucket: overconsumption


def test_a_request_larger_than_the_bucket_is_granted_and_blocks_for_ratio_times_refill(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    result = bucket.reduce(3000)
    # 3000 - 1000 in the bucket = 2000 over, 2 x size: blocked for 2 x refill_time.
    assert (result.reduction, result.wait_ns) == (Reduction.OVERCONSUMED, 2000 * MS)
    assert result.granted
    assert bucket.budget == -2000
    assert bucket.reduce(1).wait_ns == 2001 * MS
    assert bucket.reduce(5000).wait_ns == 2000 * MS   # another big one waits for the debt only
    clock.advance(2000 * MS)
    assert bucket.budget == 0
    assert bucket.reduce(1).wait_ns == 1 * MS
    clock.advance(1 * MS)
    assert bucket.reduce(1).granted


def test_a_bucket_in_debt_grants_nothing_not_even_zero_tokens(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(1500)
    assert bucket.reduce(0).wait_ns == 500 * MS
    clock.advance(500 * MS)
    assert bucket.reduce(0).reduction is Reduction.OK


def test_overconsumption_takes_what_is_left_first(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(400)
    result = bucket.reduce(1500)                 # (1500 - 600) / 1000 = 0.9 of a refill time
    assert (result.reduction, result.wait_ns) == (Reduction.OVERCONSUMED, 900 * MS)


def test_overconsumption_counts_the_burst(clock):
    bucket = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    assert bucket.reduce(150).reduction is Reduction.OK          # exactly burst + size
    bucket = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    result = bucket.reduce(250)                  # 200 after the burst: 100 over the size of 100
    assert (result.reduction, result.wait_ns) == (Reduction.OVERCONSUMED, 1000 * MS)
    assert bucket.one_time_burst_left == 0


# ---- TokenBucket: refunds and construction


def test_force_replenish_refunds_up_to_size(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(300)
    bucket.force_replenish(200)
    assert bucket.budget == 900
    bucket.force_replenish(500)
    assert bucket.budget == 1000


def test_force_replenish_goes_back_to_the_burst_while_it_lasts(clock):
    bucket = TokenBucket(100, 1000, one_time_burst=50, clock=clock)
    bucket.reduce(30)
    bucket.force_replenish(100)
    assert (bucket.one_time_burst_left, bucket.budget) == (50, 100)


def test_force_replenish_pays_off_a_debt(clock):
    bucket = TokenBucket(1000, 1000, clock=clock)
    bucket.reduce(3000)
    bucket.force_replenish(2500)
    assert bucket.budget == 500


@pytest.mark.parametrize("size, refill", [(0, 1000), (1000, 0), (0, 0)])
def test_size_or_refill_time_0_means_no_bucket(size, refill):
    assert TokenBucket.create(size, refill, 10) is None
    with pytest.raises(ValueError, match="no limit"):
        TokenBucket(size, refill)


def test_bucket_arguments_are_checked(clock):
    with pytest.raises(ValueError):
        TokenBucket(-1, 1000)
    with pytest.raises(ValueError):
        TokenBucket(10, MAX_REFILL_TIME_MS + 1)
    with pytest.raises(TypeError):
        TokenBucket(10.0, 1000)                  # type: ignore[arg-type]
    bucket = TokenBucket(10, 1000, clock=clock)
    with pytest.raises(ValueError):
        bucket.reduce(-1)
    with pytest.raises(TypeError):
        bucket.reduce(True)


def test_huge_buckets_stay_exact(clock):
    bucket = TokenBucket(U64_MAX, MAX_REFILL_TIME_MS, one_time_burst=U64_MAX, clock=clock)
    assert bucket.reduce(U64_MAX).granted
    assert bucket.reduce(U64_MAX).granted
    assert bucket.budget == 0
    clock.advance(MAX_REFILL_TIME_MS * MS)
    assert bucket.budget == U64_MAX


# ---- RateLimiter


def limiter(clock, bw=(1000, 1000, 0), ops=(10, 1000, 0)):
    return RateLimiter(TokenBucket.create(*bw, clock=clock), TokenBucket.create(*ops, clock=clock))


def test_consume_takes_one_op_and_the_bytes(clock):
    lim = limiter(clock)
    assert lim.consume(100) == 0
    assert (lim.ops.budget, lim.bandwidth.budget) == (9, 900)
    assert lim.consume(0) == 0                   # a flush: an op, no bytes
    assert (lim.ops.budget, lim.bandwidth.budget) == (8, 900)
    assert not lim.is_blocked and lim.throttled == 0


def test_the_op_is_refunded_when_the_bandwidth_is_short(clock):
    lim = limiter(clock)
    assert lim.consume(1000) == 0
    assert lim.consume(500) == 500 * MS          # 500 bytes at 1000 per second
    assert (lim.ops.budget, lim.bandwidth.budget) == (9, 0)
    assert lim.throttled == 1 and lim.is_blocked and lim.blocked_ns == 500 * MS
    clock.advance(1 * MS)
    assert lim.consume(1) == 499 * MS            # blocked: even a smaller request waits its turn
    assert lim.throttled == 2
    clock.advance(499 * MS)
    assert not lim.is_blocked
    assert lim.consume(500) == 0
    assert (lim.ops.budget, lim.bandwidth.budget) == (9, 0)   # ops: min(9 + 5 in 500 ms, 10) - 1


def test_a_refused_request_waits_for_the_scarcer_bucket(clock):
    lim = limiter(clock, ops=(2, 1000, 0))       # an op every 500 ms
    assert lim.consume(0) == 0 and lim.consume(0) == 0
    assert lim.consume(100) == 500 * MS          # the bytes are there, the op is not
    assert lim.bandwidth.budget == 1000
    clock.advance(500 * MS)
    assert lim.consume(1000) == 0
    clock.advance(100 * MS)
    assert lim.consume(900) == 800 * MS          # ops: 0.2 of 1 -> 400 ms; bytes: 100 of 900 -> 800 ms
    clock.advance(800 * MS)
    assert lim.consume(900) == 0


def test_an_overconsuming_request_is_granted_and_blocks_the_limiter(clock):
    lim = limiter(clock)
    assert lim.consume(3000) == 0
    assert lim.is_blocked and lim.blocked_ns == 2000 * MS
    assert lim.consume(0) == 2000 * MS
    assert lim.throttled == 1
    clock.advance(2000 * MS)
    assert lim.consume(0) == 0


def test_one_bucket_alone_limits_and_none_means_no_limit(clock):
    ops_only = RateLimiter(None, TokenBucket(1, 1000, clock=clock))
    assert ops_only.consume(10**12) == 0
    assert ops_only.consume(0) == 1000 * MS
    unlimited = RateLimiter()
    assert not unlimited.enabled
    assert all(unlimited.consume(U64_MAX) == 0 for _ in range(1000))
    assert not unlimited.is_blocked and unlimited.throttled == 0


def test_refund_gives_back_a_granted_request(clock):
    lim = limiter(clock)
    lim.consume(400)
    lim.refund(400)
    assert (lim.ops.budget, lim.bandwidth.budget) == (10, 1000)


def test_consume_checks_its_argument(clock):
    lim = limiter(clock)
    with pytest.raises(ValueError):
        lim.consume(-1)
    with pytest.raises(ValueError):
        lim.consume(U64_MAX + 1)
    with pytest.raises(TypeError):
        lim.consume(1.0)
    assert (lim.ops.budget, lim.bandwidth.budget, lim.throttled) == (10, 1000, 0)


def test_the_buckets_must_share_a_clock():
    with pytest.raises(ValueError, match="clock"):
        RateLimiter(TokenBucket(1, 1, clock=FakeClock()), TokenBucket(1, 1, clock=FakeClock()))


def test_concurrent_consumers_never_get_more_than_the_buckets_hold(clock):
    """Threads race on a frozen clock: exactly the buckets' contents are granted, once each."""
    lim = limiter(clock, bw=(10_000, 1000, 0), ops=(1000, 1000, 0))
    granted = []
    start = threading.Barrier(8)

    def worker():
        start.wait()
        mine = sum(1 for _ in range(500) if lim.consume(7) == 0)
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 1000                  # the ops run out first (10_000 // 7 = 1428 > 1000)
    assert lim.throttled == 8 * 500 - 1000
    assert (lim.ops.budget, lim.bandwidth.budget) == (0, 10_000 - 7 * 1000)


# ---- the user-facing forms


def test_from_firecracker_reads_the_api_object(clock):
    obj = {"bandwidth": {"size": 1000, "one_time_burst": 50, "refill_time": 100},
           "ops": {"size": 10, "refill_time": 1000}}
    lim = RateLimiter.from_firecracker(obj, clock=clock)
    assert lim.config() == {"bandwidth": {"size": 1000, "one_time_burst": 50, "refill_time": 100},
                            "ops": {"size": 10, "one_time_burst": 0, "refill_time": 1000}}
    assert lim.bandwidth.clock is clock
    assert lim.consume(1050) == 0
    assert lim.consume(1) == 100 * MS // 1000     # 1000 bytes per 100 ms


@pytest.mark.parametrize("obj", [
    {}, {"bandwidth": None, "ops": None}, {"bandwidth": {"size": 0, "refill_time": 100}},
    {"ops": {"size": 100, "refill_time": 0, "one_time_burst": 5}},
])
def test_from_firecracker_without_a_limit(obj):
    lim = RateLimiter.from_firecracker(obj)
    assert not lim.enabled and lim.config() == {}


@pytest.mark.parametrize("obj, message", [
    ([], "rate_limiter: expected an object, got an array"),
    (None, "rate_limiter: expected an object, got null"),
    ({"bw": {}}, "rate_limiter.bw: unknown field"),
    ({"ops": 5}, "rate_limiter.ops: expected an object, got a number (5)"),
    ({"bandwidth": {"size": 1, "refill_time": -1}}, "rate_limiter.bandwidth.refill_time: -1 is negative"),
    ({"ops": {"size": "10", "refill_time": 1}},
     "rate_limiter.ops.size: expected an integer, got a string ('10')"),
    ({"ops": {"size": True, "refill_time": 1}}, "rate_limiter.ops.size: expected an integer, got a boolean"),
    ({"ops": {"size": 10.0, "refill_time": 1}},
     "rate_limiter.ops.size: expected an integer, got a number that is not an integer (10.0)"),
    ({"ops": {"size": 10}}, "rate_limiter.ops.refill_time: missing"),
    ({"ops": {"refill_time": 10}}, "rate_limiter.ops.size: missing"),
    ({"ops": {"size": 10, "refil_time": 10}}, "rate_limiter.ops.refil_time: unknown field"),
    ({"ops": {"size": 10, "refill_time": 1, "one_time_burst": -5}},
     "rate_limiter.ops.one_time_burst: -5 is negative"),
    ({"bandwidth": {"size": 2**64, "refill_time": 1}},
     "rate_limiter.bandwidth.size: 18446744073709551616 is larger than 2**64 - 1"),
    ({"bandwidth": {"size": 1, "refill_time": MAX_REFILL_TIME_MS + 1}},
     f"rate_limiter.bandwidth.refill_time: {MAX_REFILL_TIME_MS + 1} ms is longer than"),
])
def test_from_firecracker_names_the_bad_field(obj, message):
    with pytest.raises(RateLimiterError) as caught:
        RateLimiter.from_firecracker(obj)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_from_firecracker_prefixes_the_caller_s_field_name():
    with pytest.raises(RateLimiterError, match=r"^drives\[0\]\.rate_limiter\.ops\.size: -1 is negative"):
        RateLimiter.from_firecracker({"ops": {"size": -1, "refill_time": 1}}, field="drives[0].rate_limiter")


def test_the_cli_form_is_per_second(clock):
    lim = RateLimiter.parse_cli("bps=1048576,iops=100", clock=clock)
    assert lim.config() == {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000},
                            "ops": {"size": 100, "one_time_burst": 0, "refill_time": 1000}}
    assert RateLimiter.parse_cli("iops=100").bandwidth is None
    assert not RateLimiter.parse_cli("bps=0,iops=0").enabled
    assert RateLimiter.per_second(iops=5, clock=clock).config() == {
        "ops": {"size": 5, "one_time_burst": 0, "refill_time": 1000}}


@pytest.mark.parametrize("text, message", [
    ("bps=abc", "bps: 'abc' is not a whole number"),
    ("bps=-1", "bps: '-1' is not a whole number"),
    ("iops= 1", "iops: ' 1' is not a whole number"),
    ("iops=1_000", "iops: '1_000' is not a whole number"),
    ("bps=", "bps: '' is not a whole number"),
    ("foo=1", "foo: unknown rate limit"),
    ("bps=1,bps=2", "bps: given twice"),
    ("bps", "'bps': expected bps=N or iops=N"),
    ("", "'': expected bps=N or iops=N"),
    (f"bps={2**64}", f"bps: {2**64} is larger than 2**64 - 1"),
])
def test_the_cli_form_names_the_bad_key(text, message):
    with pytest.raises(RateLimiterError) as caught:
        RateLimiter.parse_cli(text)
    assert str(caught.value).startswith(message)


# ---- snapshots


def retry_until_granted(lim, clock, requests):
    """Each request retried after the wait it is told, as a device does: the times it is granted."""
    times = []
    for nbytes in requests:
        while (wait := lim.consume(nbytes)) != 0:
            clock.advance(wait)
        times.append(clock.now)
    return times


def test_state_round_trip(clock):
    lim = limiter(clock, bw=(1000, 1000, 500), ops=(10, 1000, 3))
    retry_until_granted(lim, clock, [200, 700, 300, 100])
    clock.advance(40 * MS)
    assert lim.consume(3000) == 0                # in debt: the debt must survive the snapshot
    state = lim.save()
    assert state == RateLimiterState(
        bandwidth=TokenBucketState(size=1000, refill_time=1000, one_time_burst=500, one_time_burst_left=0,
                                   budget=lim.bandwidth.budget),
        ops=TokenBucketState(size=10, refill_time=1000, one_time_burst=3, one_time_burst_left=0,
                             budget=lim.ops.budget))
    assert state.bandwidth.budget < 0
    as_dict = dataclasses.asdict(state)          # what a snapshot file would hold
    state_again = RateLimiterState(**{k: TokenBucketState(**v) for k, v in as_dict.items()})

    other_clock = FakeClock(now=10**15)          # another host, another boot: another clock
    restored = RateLimiter.restore(state_again, clock=other_clock)
    assert restored.save() == state
    assert restored.config() == lim.config()
    requests = [0, 5000, 1, 999, 1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2000]
    start, other_start = clock.now, other_clock.now
    assert ([t - start for t in retry_until_granted(lim, clock, requests)]
            == [t - other_start for t in retry_until_granted(restored, other_clock, requests)])


def test_state_round_trip_of_unlimited_and_fresh_limiters(clock):
    assert RateLimiter.restore(RateLimiter().save()).save() == RateLimiterState(None, None)
    fresh = limiter(clock, bw=(1000, 1000, 500))
    assert RateLimiter.restore(fresh.save(), clock=clock).save() == fresh.save()


GOOD = TokenBucketState(size=1000, refill_time=1000, one_time_burst=500, one_time_burst_left=0, budget=-20)


@pytest.mark.parametrize("state, message", [
    ({"bandwidth": None, "ops": None}, "rate_limiter_state: expected a RateLimiterState, got dict"),
    (RateLimiterState(bandwidth={"size": 1}, ops=None),  # type: ignore[arg-type]
     "rate_limiter_state.bandwidth: expected a TokenBucketState, got dict"),
    (RateLimiterState(None, dataclasses.replace(GOOD, size=0)), "rate_limiter_state.ops.size: 0 in a saved"),
    (RateLimiterState(None, dataclasses.replace(GOOD, refill_time=0)),
     "rate_limiter_state.ops.refill_time: 0 in a saved"),
    (RateLimiterState(None, dataclasses.replace(GOOD, refill_time=-1)),
     "rate_limiter_state.ops.refill_time: -1 is negative"),
    (RateLimiterState(None, dataclasses.replace(GOOD, refill_time=MAX_REFILL_TIME_MS + 1)),
     "rate_limiter_state.ops.refill_time:"),
    (RateLimiterState(GOOD, dataclasses.replace(GOOD, size="1000")),
     "rate_limiter_state.ops.size: expected an integer"),
    (RateLimiterState(dataclasses.replace(GOOD, budget=1001), None),
     "rate_limiter_state.bandwidth.budget: 1001 is more than size 1000"),
    (RateLimiterState(dataclasses.replace(GOOD, budget=-U64_MAX - 1), None),
     "rate_limiter_state.bandwidth.budget: -18446744073709551616 is a debt"),
    (RateLimiterState(dataclasses.replace(GOOD, budget=True), None),
     "rate_limiter_state.bandwidth.budget: expected an integer, got a boolean"),
    (RateLimiterState(dataclasses.replace(GOOD, budget=1.5), None),
     "rate_limiter_state.bandwidth.budget: expected an integer"),
    (RateLimiterState(dataclasses.replace(GOOD, one_time_burst_left=501, budget=1000), None),
     "rate_limiter_state.bandwidth.one_time_burst_left: 501 is more than one_time_burst 500"),
    (RateLimiterState(dataclasses.replace(GOOD, one_time_burst_left=-1), None),
     "rate_limiter_state.bandwidth.one_time_burst_left: -1 is negative"),
    (RateLimiterState(dataclasses.replace(GOOD, one_time_burst_left=10, budget=999), None),
     "rate_limiter_state.bandwidth.budget: 999 with one-time burst left"),
    (RateLimiterState(dataclasses.replace(GOOD, one_time_burst=2**64), None),
     "rate_limiter_state.bandwidth.one_time_burst: 18446744073709551616 is larger than 2**64 - 1"),
])
def test_restore_refuses_bad_state(state, message):
    with pytest.raises(RateLimiterError) as caught:
        RateLimiter.restore(state)
    assert str(caught.value).startswith(message)


def test_restore_accepts_the_edges_of_good_state(clock):
    for bucket in (GOOD, dataclasses.replace(GOOD, one_time_burst_left=500, budget=1000),
                   dataclasses.replace(GOOD, budget=-U64_MAX), dataclasses.replace(GOOD, budget=1000)):
        restored = RateLimiter.restore(RateLimiterState(bucket, None), clock=clock)
        assert restored.save().bandwidth == bucket


# ---- properties


buckets = st.tuples(st.integers(1, 2000), st.integers(1, 1000), st.integers(0, 3000))
advances = st.one_of(st.integers(0, 2000), st.integers(0, 2 * 10**9))
steps = st.lists(st.tuples(st.integers(0, 6000), advances), min_size=1, max_size=40)


def check_windows(events, size, burst, refill_ns, slack):
    """events: (time, tokens granted at that step, debt slack in ns at the end of the step).

    For every window [t_i, t_j]: granted * refill_ns <= (size + burst) * refill_ns
    + size * (t_j - t_i + slack_j), i.e. granted <= size + burst + size * elapsed / refill_time, where
    slack_j is how long the grants beyond that still block the bucket (0 without overconsumption).
    """
    for i in range(len(events)):
        granted = 0
        for j in range(i, len(events)):
            granted += events[j][1]
            elapsed = events[j][0] - events[i][0]
            extra = events[j][2] if slack else 0
            assert granted * refill_ns <= (size + burst) * refill_ns + size * (elapsed + extra), (i, j)


@FUZZ
@given(buckets, steps)
def test_a_bucket_never_grants_more_than_size_burst_and_refill(config, script):
    """Requests up to size (no overconsumption): the bound holds exactly, over every window."""
    size, refill_ms, burst = config
    clock = FakeClock(now=7)
    bucket = TokenBucket(size, refill_ms, burst, clock=clock)
    events = []
    for tokens, advance in script:
        tokens %= size + 1
        result = bucket.reduce(tokens)
        assert result.reduction is not Reduction.OVERCONSUMED
        if result.reduction is Reduction.BLOCKED:
            # The wait is exact: one nanosecond sooner is too soon, the wait itself is not.
            probe = copy.deepcopy(bucket)
            probe.clock.advance(result.wait_ns - 1)
            assert probe.reduce(tokens).wait_ns == 1
            probe.clock.advance(1)
            assert probe.reduce(tokens).reduction is Reduction.OK
        events.append((clock.now, tokens if result.granted else 0, 0))
        clock.advance(advance)
    check_windows(events, size, burst, refill_ms * MS, slack=False)


@FUZZ
@given(buckets, buckets, steps)
def test_a_limiter_pays_for_every_token_it_grants(bw_config, ops_config, script):
    """Any request sizes, waits ignored: what is granted beyond size + burst + refill is paid for by
    the time the limiter stays blocked after it, and ops never overconsume."""
    clock = FakeClock(now=7)
    lim = RateLimiter(TokenBucket(*bw_config, clock=clock), TokenBucket(*ops_config, clock=clock))
    bw_events, ops_events = [], []
    refused = 0
    for nbytes, advance in script:
        wait = lim.consume(nbytes)
        refused += wait != 0
        blocked = lim.blocked_ns
        bw_events.append((clock.now, 0 if wait else nbytes, blocked))
        ops_events.append((clock.now, 0 if wait else 1, 0))
        clock.advance(advance)
    assert lim.throttled == refused
    (bw_size, bw_refill, bw_burst), (ops_size, ops_refill, ops_burst) = bw_config, ops_config
    check_windows(bw_events, bw_size, bw_burst, bw_refill * MS, slack=True)
    check_windows(ops_events, ops_size, ops_burst, ops_refill * MS, slack=False)


@FUZZ
@given(buckets, st.lists(st.integers(0, 6000), min_size=1, max_size=20))
def test_a_device_that_honours_the_waits_gets_the_configured_rate(config, requests):
    """Retrying after each wait, n bytes take no longer than the refill of what size + burst lacks."""
    size, refill_ms, burst = config
    clock = FakeClock(now=7)
    lim = RateLimiter(TokenBucket(size, refill_ms, burst, clock=clock), None)
    times = retry_until_granted(lim, clock, requests)
    # The last request is granted as soon as the budget (after the burst) has refilled enough to pay
    # for everything before it, and for itself unless it is larger than the bucket (then it only
    # waits for the debts before it to be paid).
    before, last = sum(requests[:-1]), requests[-1]
    last_need = max(0, last - max(0, burst - before))
    own = last_need if last_need <= size else 0
    paid = max(0, max(0, before - burst) + own - size)
    elapsed = times[-1] - 7
    assert elapsed * size >= paid * refill_ms * MS                     # never sooner than the rate
    assert elapsed * size <= paid * refill_ms * MS + size * 2 * len(requests)   # waits round up 1 ns
