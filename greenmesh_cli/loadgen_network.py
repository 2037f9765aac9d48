"""`greenmesh loadgen`, part 1: a province's recycling network, registered through the gateway's gRPC door.

Everything after the first key goes through the gateway with API keys, as an enterprise system would: the
platform operator's key comes from `greenmesh credential bootstrap`'s `bootstrap()` (the registry directly, as
this machine's operator); the platform then registers a regulator of the province and every enterprise, the
regulator activates the enterprises and lists their sites, each enterprise gets its own key and registers its
own sites (and submits them for review), producers register their battery models and the data-centre operator
its meters. Finally the flows service's directory (the registry's KV bucket, watched into memory) must know
every site before the load starts; `wait_for_directory` asks the flows service itself with probe batches that
store nothing.

The gateway limits each key to `GREENMESH_GATEWAY_RATE_PER_SECOND` calls (50 by default). The set-up spreads
the platform's and the regulator's calls over a few keys of each (`--setup-keys`), as a back office with several
workers would, and every call waits out a RESOURCE_EXHAUSTED for the time its RetryInfo names.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from greenmesh.energy.v1 import energy_pb2 as epb
from greenmesh.energy.v1 import energy_pb2_grpc
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.errors import error_reason, field_violations, status_from_error
from meshkit.grpc_options import CHANNEL_OPTIONS

Metadata = tuple[tuple[str, str], ...]

CALL_TIMEOUT_SECONDS = 30.0
SETUP_WAIT_SECONDS = 120.0  # how long the services may take to learn of new sites (directory) before giving up


class SetupProblem(Exception):
    """The mesh could not be reached, or refused the set-up (exit status 2)."""


def key_metadata(api_key: str) -> Metadata:
    """How an enterprise's gRPC client presents its API key to the gateway."""
    return (("authorization", f"Bearer {api_key}"),)


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The wait a RESOURCE_EXHAUSTED names in its google.rpc.RetryInfo detail, in seconds."""
    status = status_from_error(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return max(0.0, seconds)
    return None


def describe(error: grpc.aio.AioRpcError) -> str:
    reason = error_reason(error)
    return f"{error.code().name}{f' ({reason})' if reason else ''}: {error.details() or ''}"


class Front:
    """The gateway's gRPC door: one channel, the three services' stubs behind it."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        # grpc.aio: the async stubs (typed as Any, as the CLI's other clients do)
        self.registry: Any = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.flows: Any = flows_pb2_grpc.FlowServiceStub(self.channel)
        self.energy: Any = energy_pb2_grpc.EnergyServiceStub(self.channel)
        self.calls = 0
        self.throttled = 0

    async def ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.channel.channel_ready(), timeout)
        except TimeoutError:
            raise SetupProblem(f"no gateway answers at {self.target} (waited {timeout:g} s)") from None

    async def close(self) -> None:
        await self.channel.close()

    async def call(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Message,
        api_key: str,
        *,
        also_retry: Sequence[grpc.StatusCode] = (),
        retry_field: str = "",
        wait: float = 10.0,
    ) -> Any:
        """One set-up call: RESOURCE_EXHAUSTED is waited out (RetryInfo); UNAVAILABLE, `also_retry` and an
        INVALID_ARGUMENT naming `retry_field` (a site the service's directory does not know yet) are retried with a
        backoff for up to `wait` seconds; anything else is raised."""
        deadline = time.monotonic() + wait
        pause = 0.1
        while True:
            self.calls += 1
            try:
                return await method(request, metadata=key_metadata(api_key), timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.throttled += 1
                    await asyncio.sleep((retry_delay(error) or 0.1) + random.random() * 0.05)
                    continue
                again = code is grpc.StatusCode.UNAVAILABLE or code in also_retry
                if retry_field and code is grpc.StatusCode.INVALID_ARGUMENT:
                    again = any(v.field == retry_field for v in field_violations(error))
                if again and time.monotonic() < deadline:
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 2.0)
                    continue
                raise


class KeyPool:
    """Several API keys of one participant, handed out in turn."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a key pool needs a key")
        self.keys = list(keys)
        self._turn = itertools.cycle(self.keys)

    def next(self) -> str:
        return next(self._turn)


# ---- the plan -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A kind of enterprise and the one kind of site it runs."""

    name: str
    role: str  # ParticipantRole without its prefix
    facility_type: int
    listed: bool  # submitted for review and listed by the regulator
    per_operator: int  # sites per enterprise (chains run several)
    share: float  # of the province's sites
    minimum: int
    label: str  # the site's name


KINDS: tuple[Kind, ...] = (
    Kind("producer", "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, False, 1, 0.005, 2, "电池生产基地"),
    Kind("dealer", "DEALER", rpb.FACILITY_TYPE_DEALER_STORE, False, 6, 0.18, 2, "电动自行车门店"),
    Kind("outlet", "RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, True, 8, 0.0, 4, "回收网点"),
    Kind("storage", "TEMP_STORAGE_OPERATOR", rpb.FACILITY_TYPE_TEMP_STORAGE_POINT, True, 3, 0.12, 2, "集中贮存点"),
    Kind("sorter", "SORTING_CENTER_OPERATOR", rpb.FACILITY_TYPE_REGIONAL_SORTING_CENTER, True, 2, 0.03, 2, "分拣中心"),
    Kind("recycler", "RECYCLING_ENTERPRISE", rpb.FACILITY_TYPE_RECYCLING_PLANT, True, 1, 0.02, 2, "综合利用工厂"),
    Kind("datacenter", "DATA_CENTER_OPERATOR", rpb.FACILITY_TYPE_DATA_CENTER, False, 4, 0.001, 1, "数据中心"),
)
KIND_BY_NAME = {kind.name: kind for kind in KINDS}
MIN_FACILITIES = sum(kind.minimum for kind in KINDS)

# What a site of each kind may hold (sites that keep waste batteries need limits).
STORAGE_LIMITS: dict[str, rpb.StorageLimits] = {
    "outlet": rpb.StorageLimits(max_stock_kg=5_000, max_stock_units=500, max_dwell_days=30),
    "storage": rpb.StorageLimits(max_stock_kg=200_000, max_stock_units=20_000, max_dwell_days=90),
    "sorter": rpb.StorageLimits(max_stock_kg=1_000_000, max_stock_units=100_000, max_dwell_days=90),
    "recycler": rpb.StorageLimits(max_stock_kg=5_000_000, max_stock_units=500_000, max_dwell_days=180),
}
MODES_AT_OUTLETS = [rpb.RECYCLING_MODE_TRADE_IN, rpb.RECYCLING_MODE_DOOR_TO_DOOR, rpb.RECYCLING_MODE_DROP_OFF]


def site_counts(facilities: int) -> dict[str, int]:
    """How many sites of each kind a province of `facilities` sites has: outlets take what the others leave."""
    if facilities < MIN_FACILITIES:
        raise ValueError(f"a province needs at least {MIN_FACILITIES} facilities")
    counts = {kind.name: max(kind.minimum, round(facilities * kind.share)) for kind in KINDS if kind.name != "outlet"}
    counts["outlet"] = max(KIND_BY_NAME["outlet"].minimum, facilities - sum(counts.values()))
    return {kind.name: counts[kind.name] for kind in KINDS}


@dataclass(frozen=True)
class PlannedSite:
    kind: Kind
    county: str
    county_name: str
    latitude: float
    longitude: float
    code: str  # the operator's own code for it


@dataclass(frozen=True)
class PlannedEnterprise:
    kind: Kind
    credit_code: str
    legal_name: str
    sites: tuple[PlannedSite, ...]


def county_points(province: str, rng: random.Random) -> list[tuple[str, str, float, float]]:
    """(code, name, latitude, longitude) of a point inside each county-level division of the province."""
    from services.registry.domain.divisions import load_division_table

    table = load_division_table()
    points = []
    for county in table.counties_in_province(province):
        geometry = table.geometries.get(county.code)
        if geometry is None:
            continue
        inside = geometry.representative_point()
        lon, lat = float(inside.x), float(inside.y)
        # a few hundred metres off, when that is still inside the county
        moved_lon, moved_lat = lon + rng.uniform(-0.004, 0.004), lat + rng.uniform(-0.004, 0.004)
        if table.contains(county.code, moved_lon, moved_lat):
            lon, lat = moved_lon, moved_lat
        points.append((county.code, county.name, round(lat, 6), round(lon, 6)))
    if not points:
        raise SetupProblem(f"no county-level divisions with boundaries in province {province}")
    return points


def plan_network(
    province: str, facilities: int, rng: random.Random, tag: str, codes: random.Random
) -> list[PlannedEnterprise]:
    """The enterprises of a province and their sites, spread over its counties (laid out by `rng`; their credit
    codes drawn from `codes`, so that each run registers new enterprises)."""
    from services.registry.domain.credit_code import make_credit_code

    points = county_points(province, rng)
    rng.shuffle(points)
    enterprises: list[PlannedEnterprise] = []
    offset = 0
    for kind in KINDS:
        count = site_counts(facilities)[kind.name]
        sites = []
        for number in range(count):
            code, name, lat, lon = points[(offset + number) % len(points)]
            # several sites of a kind in one county stand a little apart (the registry allows 2 km off its map)
            lap = (offset + number) // len(points)
            lat, lon = lat + 0.0007 * (lap % 5), lon - 0.0007 * (lap // 5 % 5)
            sites.append(
                PlannedSite(kind, code, name, round(lat, 6), round(lon, 6), f"LG-{tag}-{kind.name}-{number:05d}")
            )
        offset += count
        for first in range(0, count, kind.per_operator):
            chunk = tuple(sites[first : first + kind.per_operator])
            number = first // kind.per_operator + 1
            enterprises.append(
                PlannedEnterprise(
                    kind,
                    make_credit_code(chunk[0].county, rng=codes),
                    f"{chunk[0].county_name}{kind.label}运营公司 {tag}-{number}",
                    chunk,
                )
            )
    return enterprises


# ---- what the set-up leaves -----------------------------------------------------------------------------------


@dataclass(eq=False)
class Enterprise:
    kind: str
    participant_id: str
    credit_code: str
    api_key: str
    sites: list[Site] = field(default_factory=list)

    @property
    def metadata(self) -> Metadata:
        return key_metadata(self.api_key)


@dataclass(eq=False)
class Site:
    facility_id: str
    kind: str
    county: str
    operator: Enterprise

    @property
    def city(self) -> str:
        return self.county[:4]


@dataclass(frozen=True)
class Model:
    model_id: str
    mass_kg: float


@dataclass(eq=False)
class MeterLine:
    """A meter of a data centre, and where its readings have got to."""

    meter_id: str
    operator: Enterprise
    interval: dt.timedelta
    cursor: dt.datetime  # the start of the next reading
    base_kwh: float
    busy: bool = False
    acknowledged: int = 0  # readings stored (first answers)


@dataclass
class Network:
    province: str
    platform_id: str
    platform: KeyPool
    regulator: KeyPool
    enterprises: list[Enterprise]
    sites: dict[str, list[Site]]
    models: dict[str, list[Model]]  # producer participant id -> its models
    meters: list[MeterLine]
    setup_seconds: float = 0.0
    setup_calls: int = 0
    setup_throttled: int = 0
    directory_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "enterprises": len(self.enterprises),
            "enterprises_by_kind": {
                kind.name: sum(1 for e in self.enterprises if e.kind == kind.name) for kind in KINDS
            },
            "facilities": sum(len(sites) for sites in self.sites.values()),
            "facilities_by_kind": {kind: len(sites) for kind, sites in self.sites.items()},
            "listed": sum(len(self.sites[k.name]) for k in KINDS if k.listed),
            "battery_models": sum(len(models) for models in self.models.values()),
            "meters": len(self.meters),
            "setup_seconds": round(self.setup_seconds, 2),
            "setup_calls": self.setup_calls,
            "setup_throttled": self.setup_throttled,
            "directory_wait_seconds": round(self.directory_seconds, 2),
        }


# ---- the set-up -----------------------------------------------------------------------------------------------

MODELS: tuple[fpb.BatteryModel, ...] = (
    fpb.BatteryModel(
        model_code="TDR-48V20AH", chemistry=fpb.CHEMISTRY_LFP, nominal_voltage_v=48, capacity_ah=20, energy_wh=960,
        mass_kg=9.5, safe_service_life_years=5,
    ),
    fpb.BatteryModel(
        model_code="TDR-60V24AH", chemistry=fpb.CHEMISTRY_NCM, nominal_voltage_v=60, capacity_ah=24, energy_wh=1440,
        mass_kg=8.2, safe_service_life_years=3,
    ),
)  # fmt: skip


def regulator_code(province: str) -> str:
    """The made-up credit code of the load generator's regulator of a province: the same every run, so runs
    against one mesh share it."""
    from services.registry.domain.credit_code import make_credit_code

    return make_credit_code(f"{province}0000", seed=f"greenmesh-loadgen-regulator-{province}")


class Builder:
    """Registers a planned network through the gateway."""

    def __init__(
        self,
        front: Front,
        province: str,
        platform_id: str,
        platform: KeyPool,
        tag: str,
        setup_keys: int,
        concurrency: int,
        progress: Callable[[str, int], None],
    ) -> None:
        self.front = front
        self.province = province
        self.platform_id = platform_id
        self.platform = platform
        self.tag = tag
        self.setup_keys = setup_keys
        self.concurrency = concurrency
        self.progress = progress  # (what, how many more) for the progress display
        self.regulator: KeyPool | None = None

    async def _issue(self, participant_id: str, label: str) -> str:
        issued = await self.front.call(
            self.front.registry.IssueCredential,
            rpb.IssueCredentialRequest(participant_id=participant_id, label=label),
            self.platform.next(),
        )
        return str(issued.api_key)

    async def more_platform_keys(self) -> None:
        extra = [await self._issue(self.platform_id, "greenmesh loadgen set-up") for _ in range(self.setup_keys - 1)]
        self.platform = KeyPool([*self.platform.keys, *extra])

    async def regulator_keys(self) -> KeyPool:
        """The province's regulator (registered and activated once per mesh), with fresh keys."""
        registry = self.front.registry
        code = regulator_code(self.province)
        try:
            found = await self.front.call(
                registry.GetParticipant, rpb.GetParticipantRequest(credit_code=code), self.platform.next()
            )
            regulator: rpb.Participant = found.participant
        except grpc.aio.AioRpcError as error:
            if error.code() is not grpc.StatusCode.NOT_FOUND:
                raise
            registered = await self.front.call(
                registry.RegisterParticipant,
                rpb.RegisterParticipantRequest(
                    participant=rpb.Participant(
                        credit_code=code,
                        legal_name=f"省级电池回收监管部门 ({self.province}, greenmesh loadgen)",
                        roles=[rpb.PARTICIPANT_ROLE_REGULATOR],
                        supervised_division_code=f"{self.province}0000",
                    )
                ),
                self.platform.next(),
            )
            regulator = registered.participant
        if regulator.status != rpb.PARTICIPANT_STATUS_ACTIVE:
            changed = await self.front.call(
                registry.ChangeParticipantStatus,
                rpb.ChangeParticipantStatusRequest(
                    participant_id=regulator.participant_id,
                    status=rpb.PARTICIPANT_STATUS_ACTIVE,
                    reason="regulator of the province (greenmesh loadgen)",
                    version=regulator.version,
                ),
                self.platform.next(),
            )
            regulator = changed.participant
        keys = [
            await self._issue(regulator.participant_id, "greenmesh loadgen regulator") for _ in range(self.setup_keys)
        ]
        self.regulator = KeyPool(keys)
        return self.regulator

    async def enterprise(self, planned: PlannedEnterprise) -> Enterprise:
        """Registered by the platform, activated by the regulator, its own key; then its sites, registered and
        submitted for review with that key, and listed by the regulator."""
        assert self.regulator is not None
        registry = self.front.registry
        registered = await self.front.call(
            registry.RegisterParticipant,
            rpb.RegisterParticipantRequest(
                participant=rpb.Participant(
                    credit_code=planned.credit_code,
                    legal_name=planned.legal_name,
                    roles=[rpb.ParticipantRole.Value(f"PARTICIPANT_ROLE_{planned.kind.role}")],
                    contact_phone="025-8888 0000",
                )
            ),
            self.platform.next(),
        )
        participant: rpb.Participant = registered.participant
        await self.front.call(
            registry.ChangeParticipantStatus,
            rpb.ChangeParticipantStatusRequest(
                participant_id=participant.participant_id,
                status=rpb.PARTICIPANT_STATUS_ACTIVE,
                reason="licence and documents checked",
                version=participant.version,
            ),
            self.regulator.next(),
        )
        key = await self._issue(participant.participant_id, f"{planned.kind.name} system")
        enterprise = Enterprise(planned.kind.name, participant.participant_id, participant.credit_code, key)
        for planned_site in planned.sites:
            enterprise.sites.append(await self._site(enterprise, planned_site))
            self.progress("facilities", 1)
        self.progress("enterprises", 1)
        return enterprise

    async def _site(self, enterprise: Enterprise, planned: PlannedSite) -> Site:
        assert self.regulator is not None
        registry = self.front.registry
        kind = planned.kind
        facility = rpb.Facility(
            operator_id=enterprise.participant_id,
            operator_facility_code=planned.code,
            name=f"{planned.county_name}{kind.label} {planned.code[-5:]}",
            facility_type=kind.facility_type,  # type: ignore[arg-type]
            county_code=planned.county,
            location=rpb.GeoPoint(latitude=planned.latitude, longitude=planned.longitude),
            address=f"{planned.county_name}环保路 {int(planned.code[-5:]) + 1} 号",
            opening_hours="08:30-18:00",
            phone="025-8888 0000",
            recycling_modes=MODES_AT_OUTLETS if kind.name == "outlet" else [],
            storage_limits=STORAGE_LIMITS.get(kind.name),
            safety=rpb.SafetyAttributes(fire_class="B", has_discharge_equipment=True, has_monitoring=True),
        )
        site = (
            await self.front.call(
                registry.RegisterFacility, rpb.RegisterFacilityRequest(facility=facility), enterprise.api_key
            )
        ).facility
        if kind.listed:
            for status, key in (
                (rpb.ACCREDITATION_STATUS_UNDER_REVIEW, enterprise.api_key),
                (rpb.ACCREDITATION_STATUS_LISTED, self.regulator.next()),
            ):
                site = (
                    await self.front.call(
                        registry.ChangeAccreditation,
                        rpb.ChangeAccreditationRequest(
                            facility_id=site.facility_id, status=status, reason="site inspected", version=site.version
                        ),
                        key,
                    )
                ).facility
        return Site(site.facility_id, kind.name, planned.county, enterprise)

    async def all_enterprises(self, planned: Sequence[PlannedEnterprise]) -> list[Enterprise]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: PlannedEnterprise) -> Enterprise:
            async with gate:
                return await self.enterprise(item)

        return list(await asyncio.gather(*(one(item) for item in planned)))

    async def models(self, producers: Sequence[Enterprise]) -> dict[str, list[Model]]:
        """Each producer's battery models (retried while the flows service does not know the producer yet)."""
        found: dict[str, list[Model]] = {}
        for producer in producers:
            found[producer.participant_id] = []
            for model in MODELS:
                reply = await self.front.call(
                    self.front.flows.RegisterBatteryModel,
                    fpb.RegisterBatteryModelRequest(model=model),
                    producer.api_key,
                    also_retry=(grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED),
                    wait=SETUP_WAIT_SECONDS,
                )
                found[producer.participant_id].append(Model(reply.model.model_id, reply.model.mass_kg))
        return found

    async def meters(self, sites: Sequence[Site], start: dt.datetime, rng: random.Random) -> list[MeterLine]:
        """Four 15-minute energy meters per data centre (retried until the energy service knows the site)."""
        lines = []
        quarter = dt.timedelta(minutes=15)
        for site in sites:
            for name, role, point, base in (
                ("总进线电能表", epb.METER_ROLE_FACILITY_TOTAL, 0, 900.0),
                ("UPS 输出电能表", epb.METER_ROLE_IT_LOAD, epb.IT_MEASUREMENT_POINT_UPS_OUTPUT, 600.0),
                ("制冷系统电能表", epb.METER_ROLE_AUX, 0, 220.0),
                ("照明与辅助电能表", epb.METER_ROLE_AUX, 0, 35.0),
            ):
                meter = epb.Meter(
                    site_id=site.facility_id,
                    name=name,
                    quantity=epb.METER_QUANTITY_ACTIVE_ENERGY,
                    unit=epb.UNIT_KWH,
                    mode=epb.READING_MODE_INTERVAL,
                    interval=Duration(seconds=int(quarter.total_seconds())),
                    role=role,
                    it_measurement_point=point,  # type: ignore[arg-type]
                    direction=epb.DIRECTION_IMPORT,
                )
                reply = await self.front.call(
                    self.front.energy.CreateMeter,
                    epb.CreateMeterRequest(meter=meter),
                    site.operator.api_key,
                    also_retry=(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ),
                    retry_field="meter.site_id",
                    wait=SETUP_WAIT_SECONDS,
                )
                lines.append(
                    MeterLine(reply.meter.meter_id, site.operator, quarter, start, base * rng.uniform(0.8, 1.2))
                )
        return lines


# ---- is the flows service ready for these sites? ----------------------------------------------------------------


def probe_event(site: Site) -> fpb.FlowEvent:
    """An event at the site that the flows service takes only once its directory knows the site (operator,
    listing): by quantity, so it touches no battery's state. It travels in a ROLLBACK batch with a malformed
    event, so it is never stored."""
    import uuid

    from google.protobuf.timestamp_pb2 import Timestamp

    when = Timestamp()
    when.FromDatetime(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    pieces = [fpb.QuantityElement(product_class="probe", quantity=1, unit=fpb.UNIT_OF_MEASURE_PIECES)]
    step = {
        "outlet": fpb.BIZ_STEP_COLLECTING,
        "dealer": fpb.BIZ_STEP_RETAIL_SELLING,
    }.get(site.kind, fpb.BIZ_STEP_STORING)
    return fpb.FlowEvent(
        event_id=str(uuid.uuid4()),
        event_time=when,
        event_time_zone_offset="+08:00",
        biz_step=step,
        facility_id=site.facility_id,
        quantities=pieces,
        collection_mode=fpb.COLLECTION_MODE_DROP_OFF if site.kind == "outlet" else fpb.COLLECTION_MODE_UNSPECIFIED,
        disposition=fpb.DISPOSITION_WASTE if site.kind == "outlet" else fpb.DISPOSITION_UNSPECIFIED,
    )


async def _probe(front: Front, enterprise: Enterprise, sites: Sequence[Site]) -> list[Site]:
    """The sites the flows service does not know well enough yet (all of them while its directory loads)."""
    events = [probe_event(site) for site in sites]
    request = fpb.ReportEventsRequest(events=[*events, fpb.FlowEvent()], error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK)
    try:
        reply = await front.call(front.flows.ReportEvents, request, enterprise.api_key)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
            return list(sites)  # "directory not ready"
        raise
    if not reply.rolled_back:
        raise SetupProblem("a directory probe batch was stored: the flows service ignored its ROLLBACK")
    return [
        site
        for site, result in zip(sites, reply.results, strict=False)
        if result.outcome != fpb.EVENT_OUTCOME_NOT_STORED or result.rule_hits
    ]


async def wait_for_directory(front: Front, enterprises: Sequence[Enterprise], timeout: float) -> float:
    """Until the flows service takes an event at every flow site from its operator (seconds waited)."""
    started = time.monotonic()
    pending = {e: list(e.sites) for e in enterprises if e.kind != "datacenter"}
    gate = asyncio.Semaphore(8)

    async def probe(enterprise: Enterprise) -> None:
        async with gate:
            pending[enterprise] = await _probe(front, enterprise, pending[enterprise])

    while True:
        await asyncio.gather(*(probe(e) for e, sites in pending.items() if sites))
        left = [site for sites in pending.values() for site in sites]
        if not left:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SetupProblem(
                f"the flows service still does not know {len(left)} of the new facilities after {timeout:g} s "
                f"(e.g. {left[0].facility_id}, a {left[0].kind})"
            )
        await asyncio.sleep(0.5)


def meter_start(now: dt.datetime, days: int = 730) -> dt.datetime:
    """Where new meters' readings begin: two years back, on a quarter hour."""
    start = (now - dt.timedelta(days=days)).replace(second=0, microsecond=0)
    return start - dt.timedelta(minutes=start.minute % 15)


def operators_needed(counts: dict[str, int]) -> int:
    return sum(math.ceil(counts[kind.name] / kind.per_operator) for kind in KINDS)
