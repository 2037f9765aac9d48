"""`greenmesh national sync`: declare the national hub's streams, each sourcing every province's stream."""

from __future__ import annotations

import asyncio
from typing import Annotated

import nats
import typer
from rich.console import Console

from meshkit.config import SERVICES
from meshkit.national import ensure_national_streams
from meshkit.provinces import MAINLAND_PROVINCES

app = typer.Typer(help="The national level: the hub's streams over every province's.", no_args_is_help=True)


def parse_provinces(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(MAINLAND_PROVINCES)
    codes = [code.strip() for code in text.split(",") if code.strip()]
    unknown = [code for code in codes if code not in MAINLAND_PROVINCES]
    if unknown or not codes:
        raise typer.BadParameter(f"not mainland province codes: {', '.join(unknown) or '(none)'}")
    return sorted(set(codes))


async def _sync(url: str, provinces: list[str], replicas: int) -> list[str]:
    connection = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        return await ensure_national_streams(connection.jetstream(timeout=10), provinces, SERVICES, replicas=replicas)
    finally:
        await connection.close()


@app.command("sync")
def sync(
    nats_url: Annotated[str, typer.Option(help="the national hub, e.g. nats://nats:4222 in greenmesh-national")],
    provinces: Annotated[
        str, typer.Option(help="comma-separated province codes, or all (the 31 mainland ones)")
    ] = "all",
    replicas: Annotated[int, typer.Option(min=1, max=5, help="replicas of each national stream")] = 1,
) -> None:
    """Declare or update the hub's streams (GREENMESH_NATIONAL_<COMPONENT>), each sourcing that component's stream
    of every province through the province's JetStream domain (p<code>). Idempotent: run it again to add a
    province."""
    codes = parse_provinces(provinces)
    names = asyncio.run(_sync(nats_url, codes, replicas))
    Console().print(f"{', '.join(names)}: sourcing {len(codes)} provinces ({', '.join(codes)})")
