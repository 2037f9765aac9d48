"""The national level of NATS: each province's JetStream is its own domain (`p32`), joined as a leaf node to a
national hub (domain `national`), whose streams source every province's event streams.

A province keeps running on its own: its services publish to and consume from their province's JetStream only.
The hub's sourcing consumers read each province stream over the leaf connection through that domain's API
prefix (`$JS.p32.API`); while a link is down the province keeps storing, and the hub resumes from where it was
when the link is back, so the national stream receives every event once (sources also keep `Nats-Msg-Id`, and
the national stream's duplicate window drops a copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nats.js import JetStreamContext, api

from meshkit.config import SERVICES, Component
from meshkit.provinces import MAINLAND_PROVINCES
from meshkit.subjects import stream_name

NATIONAL_DOMAIN = "national"


def province_domain(province: str) -> str:
    """The JetStream domain of a province's NATS: `p` and the GB/T 2260 code (domains may not start with a digit)."""
    return f"p{province}"


def national_stream_name(component: Component | str) -> str:
    return f"GREENMESH_NATIONAL_{Component(component).value.upper()}"


def leaf_config(
    *, domain: str, leaf_listen: str | None = None, leaf_remotes: Sequence[str] = (), reconnect_seconds: int = 1
) -> str:
    """nats-server configuration (besides port and store, given on the command line) for a domain that either
    accepts leaf connections (the hub: `leaf_listen`, host:port) or makes them (a province: `leaf_remotes`)."""
    lines = [f"jetstream {{ domain: {domain} }}"]
    if leaf_listen or leaf_remotes:
        lines.append("leafnodes {")
        if leaf_listen:
            lines.append(f"  listen: {leaf_listen}")
        if leaf_remotes:
            urls = ", ".join(f'"{url}"' for url in leaf_remotes)
            lines.append(f'  reconnect: "{reconnect_seconds}s"')
            lines.append(f"  remotes: [ {{ urls: [ {urls} ] }} ]")
        lines.append("}")
    return "\n".join(lines) + "\n"


def national_stream_config(
    component: Component | str, provinces: Iterable[str], *, max_age_days: float = 400.0, replicas: int = 1
) -> api.StreamConfig:
    """The hub's stream of one component: every province's stream of it, sourced through its domain."""
    sources = [
        api.StreamSource(
            name=stream_name(province, component),
            external=api.ExternalStream(api=f"$JS.{province_domain(province)}.API"),
        )
        for province in sorted(set(provinces))
    ]
    return sourcing_stream_config(
        national_stream_name(component), sources, max_age_days=max_age_days, replicas=replicas, duplicate_window=600
    )


def sourcing_stream_config(
    name: str, sources: list[api.StreamSource], *, max_age_days: float, replicas: int, duplicate_window: float
) -> api.StreamConfig:
    """A file-stored stream with no subjects of its own that only sources `sources` (kept `max_age_days`)."""
    return api.StreamConfig(
        name=name,
        subjects=[],
        sources=sources,
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=max_age_days * 86400,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
    )


def inbound_stream_name(province: str) -> str:
    """A province's stream of what the nation sends it (cross-province transfers): ``GREENMESH_<p>_INBOUND``."""
    return f"GREENMESH_{province}_INBOUND"


def transfer_subject(origin: str, destination: str) -> str:
    """Where the origin province's flows publishes a shipment to a facility of ``destination``."""
    return f"greenmesh.{origin}.flows.v1.transfer_shipped.{destination}"


def receipt_subject(destination: str, origin: str) -> str:
    """Where the destination province's flows publishes the receipt of a shipment from ``origin``."""
    return f"greenmesh.{destination}.flows.v1.transfer_received.{origin}"


# What a province's inbound stream takes from the hub's registry stream: every province's facility and
# participant changes (the directory of who may receive waste, and the operators' roles the rules check).
INBOUND_REGISTRY_SUBJECTS = ("greenmesh.*.registry.v1.facility_changed", "greenmesh.*.registry.v1.participant_changed")


def inbound_stream_config(
    province: str, *, max_age_days: float = 400.0, replicas: int = 1, duplicate_window: float = 600.0
) -> api.StreamConfig:
    """The province's stream of what the nation sends it, with no subjects of its own: it sources, through the
    hub's domain, the facility and participant changes of every province from ``GREENMESH_NATIONAL_REGISTRY``,
    and from ``GREENMESH_NATIONAL_FLOWS`` the transfers shipped to this province and the receipts, elsewhere, of
    what this province shipped. While the link is down it just waits; the sourcing resumes where it stopped once
    the hub is back (duplicates dropped by ``Nats-Msg-Id``)."""
    hub = api.ExternalStream(api=f"$JS.{NATIONAL_DOMAIN}.API")
    sources = [
        api.StreamSource(name=national_stream_name(Component.REGISTRY), filter_subject=subject, external=hub)
        for subject in INBOUND_REGISTRY_SUBJECTS
    ]
    sources += [
        api.StreamSource(name=national_stream_name(Component.FLOWS), filter_subject=subject, external=hub)
        for subject in (transfer_subject("*", province), receipt_subject("*", province))
    ]
    return sourcing_stream_config(
        inbound_stream_name(province),
        sources,
        max_age_days=max_age_days,
        replicas=replicas,
        duplicate_window=duplicate_window,
    )


async def ensure_inbound_stream(js: JetStreamContext, config: api.StreamConfig) -> None:
    """Create the province's inbound stream, or update it to ``config``. Idempotent."""
    import nats.js.errors

    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


async def ensure_national_streams(
    js: JetStreamContext,
    provinces: Iterable[str] = MAINLAND_PROVINCES,
    components: Sequence[Component] = SERVICES,
    *,
    replicas: int = 1,
) -> list[str]:
    """Declare (or update, e.g. with a new province) the hub's streams; returns their names. Idempotent."""
    import nats.js.errors

    chosen = sorted(set(provinces))
    names = []
    for component in components:
        config = national_stream_config(component, chosen, replicas=replicas)
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
        names.append(str(config.name))
    return names
