"""The front's pure parts: token buckets, the credential cache's rules, key and request-id parsing, deadlines.

The cache is driven here by a verify function standing in for the registry's VerifyCredential, to control
timing and failures exactly; tests/gateway/test_gateway_grpc.py runs it against the real registry and NATS.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from gateway.credentials import CredentialCache, InvalidCredential, VerifierUnavailable
from gateway.front import FrontPolicy, _address_only, parse_api_key, request_id_from
from gateway.http_rules import front_methods
from gateway.limits import Rate, RateLimiter
from greenmesh.registry.v1 import registry_pb2 as pb


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- token buckets ----------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_refuses_with_the_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    rate = Rate(per_second=2.0, burst=3.0)
    assert [limiter.take("k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", rate) == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.take("k", rate) == 0.0
    assert limiter.take("k", rate) == pytest.approx(0.5)


def test_buckets_are_per_key_and_refill_to_the_burst_only() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    rate = Rate(per_second=1.0, burst=2.0)
    assert limiter.take("a", rate) == 0.0
    assert limiter.take("a", rate) == 0.0
    assert limiter.take("a", rate) > 0
    assert limiter.take("b", rate) == 0.0  # another key has its own bucket
    clock.now += 3600  # a long idle time refills to the burst, not beyond
    assert [limiter.take("a", rate) for _ in range(3)][2] > 0


def test_idle_full_buckets_are_swept_but_not_partly_used_ones() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, sweep_every=3)
    slow = Rate(per_second=0.01, burst=5.0)
    fast = Rate(per_second=100.0, burst=5.0)
    limiter.take("slow", slow)  # full again only after 100 s
    limiter.take("fast", fast)  # full again after 10 ms
    clock.now += 1.0
    limiter.take("third", fast)  # the third new bucket sweeps
    assert len(limiter) == 2  # "fast" was full again and is gone; "slow" is kept


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Rate(per_second=0, burst=1)
    with pytest.raises(ValueError):
        Rate(per_second=1, burst=0.5)


# ---- the credential cache ---------------------------------------------------------------------------


def verified_reply(key_id: str, participant_id: str) -> pb.VerifyCredentialResponse:
    return pb.VerifyCredentialResponse(
        credential=pb.Credential(key_id=key_id, participant_id=participant_id),
        participant=pb.Participant(
            participant_id=participant_id,
            roles=[pb.PARTICIPANT_ROLE_REGULATOR],
            supervised_division_code="320000",
        ),
    )


def rpc_error(code: grpc.StatusCode, message: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=message)


class Registry:
    """Answers like VerifyCredential: a reply for known keys, UNAUTHENTICATED otherwise."""

    def __init__(self) -> None:
        self.keys: dict[str, pb.VerifyCredentialResponse] = {}
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.down = False

    async def verify(self, api_key: str) -> pb.VerifyCredentialResponse:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
        if api_key not in self.keys:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked API key")
        return self.keys[api_key]


async def test_a_verified_key_is_cached_until_its_time_to_live() -> None:
    registry, clock = Registry(), Clock()
    registry.keys["gmk_a.s"] = verified_reply("gmk_a", "p1")
    cache = CredentialCache(verify=registry.verify, ttl_seconds=60, clock=clock)
    first = await cache.authenticate("gmk_a.s")
    assert first.key_id == "gmk_a"
    assert first.caller.participant_id == "p1"
    assert first.caller.roles == frozenset({"REGULATOR"})
    assert first.caller.supervised_division == "320000"
    await cache.authenticate("gmk_a.s")
    assert registry.calls == 1
    clock.now += 61
    await cache.authenticate("gmk_a.s")
    assert registry.calls == 2


async def test_revocation_and_participant_changes_evict_at_once() -> None:
    registry = Registry()
    registry.keys["gmk_a.s"] = verified_reply("gmk_a", "p1")
    registry.keys["gmk_b.s"] = verified_reply("gmk_b", "p1")
    registry.keys["gmk_c.s"] = verified_reply("gmk_c", "p2")
    cache = CredentialCache(verify=registry.verify)
    for key in registry.keys:
        await cache.authenticate(key)
    del registry.keys["gmk_a.s"]
    cache.evict_key("gmk_a")
    with pytest.raises(InvalidCredential) as invalid:
        await cache.authenticate("gmk_a.s")
    assert invalid.value.reason == "INVALID_API_KEY"
    cache.evict_participant("p1")
    assert len(cache) == 1  # only gmk_c (p1 had gmk_a, now refused, and gmk_b)
    calls = registry.calls
    await cache.authenticate("gmk_b.s")
    await cache.authenticate("gmk_c.s")
    assert registry.calls == calls + 1  # only p1's key was asked again


async def test_concurrent_misses_share_one_registry_call() -> None:
    registry = Registry()
    registry.keys["gmk_a.s"] = verified_reply("gmk_a", "p1")
    registry.gate = asyncio.Event()
    cache = CredentialCache(verify=registry.verify)
    waiting = [asyncio.create_task(cache.authenticate("gmk_a.s")) for _ in range(20)]
    await asyncio.sleep(0.01)
    registry.gate.set()
    results = await asyncio.gather(*waiting)
    assert registry.calls == 1
    assert {result.key_id for result in results} == {"gmk_a"}


async def test_an_answer_fetched_across_an_eviction_is_not_cached() -> None:
    registry = Registry()
    registry.keys["gmk_a.s"] = verified_reply("gmk_a", "p1")
    registry.gate = asyncio.Event()
    cache = CredentialCache(verify=registry.verify)
    pending = asyncio.create_task(cache.authenticate("gmk_a.s"))
    await asyncio.sleep(0.01)
    cache.evict_key("gmk_a")  # the revocation arrives while the registry call is in flight
    registry.gate.set()
    await pending  # this call still gets the answer it asked for …
    assert len(cache) == 0  # … but it is not kept
    registry.gate = None
    del registry.keys["gmk_a.s"]
    with pytest.raises(InvalidCredential):
        await cache.authenticate("gmk_a.s")


async def test_bad_keys_are_remembered_briefly_and_an_unreachable_registry_is_not_a_bad_key() -> None:
    registry, clock = Registry(), Clock()
    cache = CredentialCache(verify=registry.verify, negative_ttl_seconds=5, clock=clock)
    for _ in range(3):
        with pytest.raises(InvalidCredential):
            await cache.authenticate("gmk_x.wrong")
    assert registry.calls == 1
    clock.now += 6
    registry.down = True
    with pytest.raises(VerifierUnavailable):
        await cache.authenticate("gmk_x.wrong")
    with pytest.raises(VerifierUnavailable):
        await cache.authenticate("gmk_x.wrong")
    assert registry.calls == 3  # failures to ask are never cached


async def test_the_registry_reason_travels_with_the_refusal() -> None:
    from meshkit.errors import Unauthenticated

    status = Unauthenticated("the participant is SUSPENDED", reason="PARTICIPANT_NOT_ACTIVE").to_status()
    trailing = Metadata(("grpc-status-details-bin", status.SerializeToString()))

    async def suspended(api_key: str) -> pb.VerifyCredentialResponse:
        raise AioRpcError(grpc.StatusCode.UNAUTHENTICATED, Metadata(), trailing, details=status.message)

    cache = CredentialCache(verify=suspended)
    with pytest.raises(InvalidCredential) as invalid:
        await cache.authenticate("gmk_q.s")
    assert invalid.value.reason == "PARTICIPANT_NOT_ACTIVE"
    assert invalid.value.message == "the participant is SUSPENDED"


# ---- parsing and deadlines ---------------------------------------------------------------------------


def test_api_keys_are_read_bare_or_as_bearer_tokens() -> None:
    assert parse_api_key("Bearer gmk_a.s") == "gmk_a.s"
    assert parse_api_key("bearer   gmk_a.s ") == "gmk_a.s"
    assert parse_api_key("gmk_a.s") == "gmk_a.s"
    assert parse_api_key("") is None
    assert parse_api_key("Bearer ") is None
    assert parse_api_key(None) is None


def test_request_ids_are_kept_when_sane_and_made_otherwise() -> None:
    assert request_id_from("req-42.a_b:c") == "req-42.a_b:c"
    made = request_id_from("has spaces and \n newlines")
    assert len(made) == 32 and made != request_id_from(None)
    assert len(request_id_from("x" * 200)) == 32


def test_client_addresses_lose_their_ports() -> None:
    assert _address_only("ipv4:10.1.2.3:5555") == "10.1.2.3"
    assert _address_only("ipv6:[::1]:5555") == "::1"
    assert _address_only("10.1.2.3") == "10.1.2.3"
    assert _address_only("::1") == "::1"


def test_deadlines_default_cap_and_stream_longer() -> None:
    from gateway.front import Front

    policy = FrontPolicy(default_timeout_seconds=10, max_timeout_seconds=60, stream_timeout_seconds=3600)
    front = Front(
        credentials=CredentialCache(verify=Registry().verify),
        limiter=RateLimiter(),
        signing_key=b"k" * 32,
        methods=front_methods(),
        policy=policy,
    )
    unary = "/greenmesh.flows.v1.FlowService/ReportEvent"
    stream = "/greenmesh.flows.v1.FlowService/SubscribeEvents"
    assert front._timeout(unary, None) == 10
    assert front._timeout(unary, 2.5) == 2.5
    assert front._timeout(unary, 600) == 60
    assert front._timeout(stream, None) == 3600
    assert front._timeout(stream, 7200) == 3600
    assert front._timeout(stream, 30) == 30
