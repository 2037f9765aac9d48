"""The national level on real nats-servers: a hub (JetStream domain `national`) and two provinces joined to it as
leaf nodes (domains `p32`, `p44`). The provinces' services publish to their own JetStream; the hub's streams
source them. A link outage loses nothing: the provinces keep storing, and the hub catches up afterwards."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js import api
from opentelemetry.trace import NoOpTracer

from meshkit.bus import MSG_ID_HEADER, Bus
from meshkit.config import Component, load_settings
from meshkit.localinfra import NatsServer, free_port
from meshkit.national import (
    NATIONAL_DOMAIN,
    ensure_national_streams,
    leaf_config,
    national_stream_config,
    national_stream_name,
    province_domain,
)
from meshkit.subjects import stream_name

PROVINCES = ("32", "44")


def configured(root: Path, name: str, config: str) -> NatsServer:
    path = root / f"{name}.conf"
    path.write_text(config, encoding="utf-8")
    return NatsServer(store_dir=root / name, extra_args=["-c", str(path)])


def national_servers(root: Path, codes: tuple[str, ...]) -> Iterator[tuple[NatsServer, dict[str, NatsServer]]]:
    """A hub (domain `national`, a leaf-node listener) and one province nats-server per code joined to it as a
    leaf node (domain p<code>); stopped afterwards. For fixtures: `yield from national_servers(...)`."""
    leaf_port = free_port()
    hub = configured(root, "national", leaf_config(domain=NATIONAL_DOMAIN, leaf_listen=f"127.0.0.1:{leaf_port}"))
    hub.start()
    provinces: dict[str, NatsServer] = {}
    try:
        for code in codes:
            config = leaf_config(domain=province_domain(code), leaf_remotes=[f"nats-leaf://127.0.0.1:{leaf_port}"])
            provinces[code] = configured(root, f"p{code}", config)
            provinces[code].start()
        yield hub, provinces
    finally:
        for server in [*provinces.values(), hub]:
            server.stop()


@pytest.fixture
def hub_and_provinces(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, NatsServer]]]:
    yield from national_servers(tmp_path, PROVINCES)


@pytest.fixture
async def buses(
    hub_and_provinces: tuple[NatsServer, dict[str, NatsServer]], tmp_path: Path
) -> AsyncIterator[dict[str, Bus]]:
    """Each province's flows bus, as the flows service of that province builds it (its stream declared)."""
    _hub, provinces = hub_and_provinces
    made = {}
    for code, server in provinces.items():
        settings = load_settings(province=code, nats_url=server.url, data_dir=tmp_path / f"data{code}")
        bus = Bus(settings=settings, component=Component.FLOWS, tracer=NoOpTracer())
        await bus.connect()
        made[code] = bus
    yield made
    for bus in made.values():
        await bus.close()


async def publish(bus: Bus, code: str, first: int, count: int) -> None:
    for index in range(first, first + count):
        await bus.publish(f"greenmesh.{code}.flows.v1.flow_event_recorded", b"event", message_id=f"{code}-{index}")


async def national_ids(url: str, expected: int, timeout: float) -> list[str]:
    """The message ids in the hub's flows stream, once it holds `expected` messages (or when time is up)."""
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            info = await js.stream_info(national_stream_name(Component.FLOWS))
            if info.state.messages >= expected or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        subscription = await js.subscribe(
            "greenmesh.*.flows.>",
            stream=national_stream_name(Component.FLOWS),
            ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        )
        ids = []
        for _ in range(info.state.messages):
            message = await subscription.next_msg(timeout=5)
            ids.append((message.headers or {}).get(MSG_ID_HEADER, ""))
        await subscription.unsubscribe()
        return ids
    finally:
        await connection.close()


def test_the_national_stream_sources_each_province_through_its_domain() -> None:
    config = national_stream_config(Component.FLOWS, ["44", "32", "32"])
    assert config.name == "GREENMESH_NATIONAL_FLOWS" and config.subjects == []
    assert [(s.name, s.external.api if s.external else None) for s in config.sources or []] == [
        (stream_name("32", Component.FLOWS), "$JS.p32.API"),
        (stream_name("44", Component.FLOWS), "$JS.p44.API"),
    ]
    assert "remotes" in leaf_config(domain="p32", leaf_remotes=["nats-leaf://hub:7422"])
    assert "listen: 0.0.0.0:7422" in leaf_config(domain="national", leaf_listen="0.0.0.0:7422")


@pytest.mark.slow
async def test_province_events_reach_the_nation_and_an_outage_loses_nothing(
    hub_and_provinces: tuple[NatsServer, dict[str, NatsServer]], buses: dict[str, Bus]
) -> None:
    hub, _provinces = hub_and_provinces
    # What the national overlay's Job runs.
    declared = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "greenmesh_cli", "national", "sync", "--nats-url", hub.url, "--provinces", "44,32"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert declared.returncode == 0, declared.stdout + declared.stderr
    assert "GREENMESH_NATIONAL_FLOWS" in declared.stdout and "2 provinces (32, 44)" in declared.stdout
    for code, bus in buses.items():
        await publish(bus, code, 0, 20)
    before = await national_ids(hub.url, 40, timeout=30)
    assert sorted(before) == sorted(f"{code}-{i}" for code in PROVINCES for i in range(20))

    # The link goes down: the hub stops. The provinces keep taking events into their own JetStream.
    hub.stop()
    for code, bus in buses.items():
        await publish(bus, code, 20, 30)
    hub.start()
    # Declaring again (a deploy re-running its job) changes nothing and duplicates nothing.
    connection = await nats.connect(hub.url)
    try:
        await ensure_national_streams(connection.jetstream(), PROVINCES, [Component.FLOWS])
    finally:
        await connection.close()
    after = await national_ids(hub.url, 100, timeout=120)
    expected = sorted(f"{code}-{i}" for code in PROVINCES for i in range(50))
    lost = set(expected) - set(after)
    duplicated = len(after) - len(set(after))
    assert (len(lost), duplicated) == (0, 0), (sorted(lost)[:5], duplicated)
    assert sorted(after) == expected
