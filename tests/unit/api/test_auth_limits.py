"""The API's bounded key cache, token buckets (api/limits.py) and client identity (api/auth.py)."""

from __future__ import annotations

from stripemeter.api.auth import client_address
from stripemeter.api.limits import (
    KEY_CACHE_SIZE,
    MISS_CACHE_SIZE,
    BoundedCache,
    KeyCache,
    failure_limiter,
)
from stripemeter.domain.rates import RateLimiter


def test_bounded_cache_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache: BoundedCache[int] = BoundedCache(size=3, ttl=10)
    for i in range(3):
        cache.put(f"k{i}", i, now=0)
    assert cache.get("k0", now=1) == (0,)  # k0 used: k1 is now the oldest
    cache.put("k3", 3, now=1)
    assert len(cache) == 3
    assert cache.get("k1", now=1) is None and cache.get("k0", now=1) == (0,)
    for i in range(1000):
        cache.put(f"x{i}", i, now=2)
        assert len(cache) <= 3


def test_bounded_cache_entries_expire() -> None:
    cache: BoundedCache[None] = BoundedCache(size=3, ttl=5)
    cache.put("k", None, now=0)
    assert cache.get("k", now=5) == (None,)  # a cached None is a hit
    assert cache.get("k", now=5.1) is None and len(cache) == 0


def test_key_cache_keeps_misses_apart_from_valid_keys() -> None:
    cache = KeyCache(size=2, miss_size=3, ttl=5, miss_ttl=30)
    row = {"key_id": "a" * 12}
    cache.put("valid", row, now=0)
    for i in range(100):  # a flood of made-up ids
        cache.put(f"made-up-{i}", None, now=1)
    assert cache.get("valid", now=2) == (row,)  # never evicted by misses
    assert len(cache.missing) == 3 and len(cache.found) == 1
    assert cache.get("made-up-99", now=20) == (None,)  # a miss is remembered for its 30 s
    assert cache.get("made-up-99", now=32) is None
    assert cache.get("valid", now=6) is None  # a valid key is read again after 5 s (revocation)
    cache.put("k", None, now=40)
    cache.put("k", row, now=41)  # created since: the miss is forgotten
    assert cache.get("k", now=42) == (row,) and cache.missing.get("k", now=42) is None
    assert (KEY_CACHE_SIZE, MISS_CACHE_SIZE) == (10_000, 10_000)  # what docs/api.md says


def test_key_cache_remembers_which_ids_were_valid_for_an_hour_and_forgets_revoked_ones() -> None:
    cache = KeyCache(size=2)
    cache.put("valid", {"key_id": "valid"}, now=0)
    assert cache.get("valid", now=10) is None  # the row itself is read again after 5 s
    assert cache.known.get("valid", now=3599) == (True,)  # but the id is no guess: no token needed
    assert cache.known.get("valid", now=3601) is None
    cache.put("valid", {"key_id": "valid"}, now=4000)
    cache.put("valid", None, now=4001)  # revoked
    assert cache.known.get("valid", now=4002) is None
    for i in range(100):
        cache.put(f"v{i}", {"key_id": f"v{i}"}, now=5000)
    assert len(cache.known) == 2


def test_rate_limiter_refills_and_gives_back() -> None:
    limiter = failure_limiter(30)  # 30 at once, then one every 2 s
    assert [limiter.take("c", now=0) for _ in range(30)] == [0.0] * 30
    wait = limiter.take("c", now=0)
    assert 1.9 < wait <= 2.0
    assert limiter.take("other", now=0) == 0.0  # per client
    limiter.give_back("c")
    assert limiter.take("c", now=0) == 0.0
    assert limiter.take("c", now=0) > 0
    assert limiter.take("c", now=2.0) == 0.0  # refilled


def test_rate_limiter_forgets_the_least_recently_seen_names_beyond_its_bound() -> None:
    limiter = RateLimiter(1.0, burst=1, max_names=100)
    for i in range(10_000):
        limiter.take(f"tenant-{i}", now=0)
    assert len(limiter.buckets) == 100
    assert "tenant-9999" in limiter.buckets and "tenant-0" not in limiter.buckets


def test_client_address_trusts_forwarded_for_only_behind_a_proxy() -> None:
    assert client_address("10.0.0.1", ["6.6.6.6"], 0) == "10.0.0.1"  # no proxy: the header is the caller's
    # one proxy appends what it saw: the right-most entry; whatever the caller wrote is left of it
    assert client_address("10.0.0.1", ["6.6.6.6, 203.0.113.7"], 1) == "203.0.113.7"
    assert client_address("10.0.0.1", ["6.6.6.6", "203.0.113.7", "10.0.0.2"], 2) == "203.0.113.7"
    assert client_address("10.0.0.1", [], 1) == "10.0.0.1"  # a proxy that did not say: the peer
    assert client_address("10.0.0.1", ["2001:db8:1:2:aaaa::1"], 1) == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:2:bbbb::9", [], 0) == "2001:db8:1:2::/64"
    assert client_address("::ffff:192.0.2.1", [], 0) == "192.0.2.1"
    assert client_address(None, [], 0) == "-"
    assert len(client_address("10.0.0.1", ["x" * 10_000], 1)) == 100
