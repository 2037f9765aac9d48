"""`greenmesh loadgen`, part 2: battery lives and meter readings sent through the gateway at a rate, and what
came back, event by event.

A battery lives in the past (so no event is in the future) and moves one step at a time: its next event is sent
only once the previous one is answered, so each battery's events reach the flows service in order, as they would
from enterprises that report what happened. The steps, each reported with the key of the enterprise that runs
the site:

    commissioning (producer) → shipping → receiving → retail selling (dealer)
      ├─ 20 %: still in use
      └─ collecting at an outlet (trade-in, door-to-door or drop-off) → shipping → receiving → storing
         (temporary storage point) → shipping → receiving → [health assessing] → sorting (sorting centre)
         → shipping → receiving → [discharging] → dismantling → recycling (recycling plant);
         some go from the storage point straight to a recycler, some from the outlet straight to a sorting centre.

Each event is sent alone (`ReportEvent`) or in its reporter's next batch (`ReportEvents`, PROCEED, flushed at
`batch_size` events or after `BATCH_LINGER_SECONDS`), by `batch_share`. A share of the budget goes to meter
readings (`UpsertReadings`, or `UploadReadings` streams by `batch_share`), another to deliberate retries of
events already acknowledged, which must answer DUPLICATE. Every new event's answer goes to the ledger (SQLite,
in memory or a file) with its event id, for the self-check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import sqlite3
import time
import uuid
from array import array
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from greenmesh.energy.v1 import energy_pb2 as epb
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh_cli.loadgen_network import Enterprise, Front, MeterLine, Model, Network, Site, retry_delay
from meshkit.errors import error_reason, field_violations

CN = dt.timezone(dt.timedelta(hours=8))
BATCH_LINGER_SECONDS = 0.25
TICK_SECONDS = 0.01
CALL_TIMEOUT_SECONDS = 30.0
MAX_ATTEMPTS = 4  # per call, for transient errors (UNAVAILABLE, DEADLINE_EXCEEDED, …)
MAX_THROTTLED = 200  # RESOURCE_EXHAUSTED answers waited out per call before it counts as failed
RETRY_POOL = 4096  # acknowledged events kept to be sent again
IN_USE_SHARE = 0.2

ACKNOWLEDGED = frozenset({fpb.EVENT_OUTCOME_ACCEPTED, fpb.EVENT_OUTCOME_QUARANTINED, fpb.EVENT_OUTCOME_DUPLICATE})
ERROR_BASE = 100  # ledger outcome of a call that ended in an error: 100 + the gRPC code's number
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)
# Refusals that answer the request (rules, bad fields, conflicts): rejections, not errors.
ANSWERS = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}
)
MODES: tuple[tuple[int, float, str], ...] = (
    (fpb.COLLECTION_MODE_TRADE_IN, 0.45, "TRADE_IN_ORDER"),
    (fpb.COLLECTION_MODE_DOOR_TO_DOOR, 0.20, "PICKUP_ORDER"),
    (fpb.COLLECTION_MODE_DROP_OFF, 0.35, ""),
)


def outcome_name(code: int) -> str:
    if code >= ERROR_BASE:
        return f"ERROR_{_CODE_BY_NUMBER.get(code - ERROR_BASE, str(code - ERROR_BASE))}"
    return fpb.EventOutcome.Name(code).removeprefix("EVENT_OUTCOME_")  # type: ignore[arg-type]


_CODE_BY_NUMBER = {status.value[0]: status.name for status in grpc.StatusCode}


def error_outcome(code: grpc.StatusCode) -> int:
    return ERROR_BASE + int(code.value[0])


def _ts(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# ---- the ledger -----------------------------------------------------------------------------------------------


class Ledger:
    """Every new event's id and final answer; later, how often the store and the stream hold it."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode = WAL" if path != ":memory:" else "PRAGMA journal_mode = MEMORY")
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS event (event_id TEXT PRIMARY KEY, outcome INTEGER NOT NULL, "
            "reason TEXT NOT NULL DEFAULT '', store_n INTEGER NOT NULL DEFAULT 0, "
            "stream_n INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
        )
        self.db.execute("DELETE FROM event")

    def record(self, rows: Iterable[tuple[str, int, str]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO event (event_id, outcome, reason) VALUES (?, ?, ?)", rows)

    def mark(self, column: str, ids: Sequence[str]) -> int:
        """Count one more sighting of each id (ids not ours are ignored); returns how many acknowledged events were
        seen there for the first time."""
        if column not in ("store_n", "stream_n"):
            raise ValueError(column)
        acked = ",".join(str(code) for code in sorted(ACKNOWLEDGED))
        fresh = 0
        unique = sorted(set(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = self.db.execute(
                f"SELECT count(*) FROM event WHERE event_id IN ({marks}) AND {column} = 0 AND outcome IN ({acked})",
                chunk,
            ).fetchone()
            fresh += int(row[0])
        self.db.executemany(f"UPDATE event SET {column} = {column} + 1 WHERE event_id = ?", ((i,) for i in ids))
        return fresh

    def count(self, where: str) -> int:
        return int(self.db.execute(f"SELECT count(*) FROM event WHERE {where}").fetchone()[0])

    def sample(self, where: str, limit: int = 20) -> list[str]:
        rows = self.db.execute(f"SELECT event_id FROM event WHERE {where} ORDER BY event_id LIMIT ?", (limit,))
        return [str(row[0]) for row in rows]

    @staticmethod
    def acked() -> str:
        return f"outcome IN ({','.join(str(code) for code in sorted(ACKNOWLEDGED))})"

    def close(self) -> None:
        self.db.commit()
        self.db.close()


# ---- statistics ---------------------------------------------------------------------------------------------------


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest rank: one of the samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    sent: int = 0  # new events, counted once each
    acknowledged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # final answers to new events
    rejected: Counter[str] = field(default_factory=Counter)  # by reason (rule id, field, code)
    quarantined: Counter[str] = field(default_factory=Counter)  # by rule id
    errors: Counter[str] = field(default_factory=Counter)  # every failed attempt, by code
    throttled: int = 0  # RESOURCE_EXHAUSTED answers, waited out
    resent: int = 0  # calls sent again after a transient error
    client_failures: Counter[str] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    batch_events: int = 0
    unary_events: int = 0
    retries_sent: int = 0
    retry_answers: Counter[str] = field(default_factory=Counter)
    batteries: int = 0
    in_use: int = 0  # lives that end in use
    recycled: int = 0
    stopped: int = 0  # lives stopped by an answer other than ACCEPTED
    readings_sent: int = 0
    readings_acknowledged: int = 0
    readings_rejected: Counter[str] = field(default_factory=Counter)
    readings_errors: int = 0
    latencies: dict[str, array[float]] = field(default_factory=dict)  # per method, ms
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (when, ms) of the last seconds
    recent_sent: deque[tuple[float, int]] = field(default_factory=deque)

    def latency(self, method: str, started: float) -> None:
        now = time.perf_counter()
        ms = (now - started) * 1000
        self.latencies.setdefault(method, array("d")).append(ms)
        self.recent.append((time.monotonic(), ms))

    def note_sent(self, count: int) -> None:
        self.recent_sent.append((time.monotonic(), count))

    def window(self, seconds: float = 5.0) -> tuple[float, float, float]:
        """(items sent per second, p50 ms, p99 ms) over the last seconds."""
        horizon = time.monotonic() - seconds
        while self.recent and self.recent[0][0] < horizon:
            self.recent.popleft()
        while self.recent_sent and self.recent_sent[0][0] < horizon:
            self.recent_sent.popleft()
        span = min(seconds, max(1e-9, time.monotonic() - self.started))
        rate = sum(n for _, n in self.recent_sent) / span
        samples = [ms for _, ms in self.recent]
        return rate, percentile(samples, 50), percentile(samples, 99)

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def latency_summary(self) -> dict[str, Any]:
        every = [ms for samples in self.latencies.values() for ms in samples]

        def figures(samples: Sequence[float]) -> dict[str, float | int]:
            return {
                "calls": len(samples),
                "p50": round(percentile(samples, 50), 2),
                "p99": round(percentile(samples, 99), 2),
                "max": round(max(samples, default=0.0), 2),
            }

        return {**figures(every), "by_method": {m: figures(s) for m, s in sorted(self.latencies.items())}}


# ---- battery lives ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Planned:
    site: Site
    step: int
    when: dt.datetime
    extra: dict[str, Any]


class Battery:
    __slots__ = ("index", "plan", "ref")

    def __init__(self, ref: fpb.BatteryRef, plan: list[Planned]) -> None:
        self.ref = ref
        self.plan = plan
        self.index = 0

    def event(self) -> tuple[fpb.FlowEvent, Planned]:
        p = self.plan[self.index]
        message = fpb.FlowEvent(
            event_id=str(uuid.uuid4()),
            event_time=_ts(p.when),
            event_time_zone_offset="+08:00",
            biz_step=p.step,  # type: ignore[arg-type]
            facility_id=p.site.facility_id,
            batteries=[self.ref],
            **p.extra,
        )
        return message, p

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)


class Province:
    """The sites a battery's life can pass through, with its routes near to each other."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.sites = network.sites
        self.producers = [s for s in network.sites["producer"] if network.models.get(s.operator.participant_id)]
        if not self.producers:
            raise ValueError("no producer with a battery model")
        self.by_city: dict[str, dict[str, list[Site]]] = {}
        for kind in ("dealer", "outlet", "storage", "sorter"):
            for site in network.sites[kind]:
                self.by_city.setdefault(kind, {}).setdefault(site.city, []).append(site)

    def near(self, kind: str, city: str, rng: random.Random) -> Site:
        """A site of the kind in the same city when there is one (nine times in ten), else anywhere."""
        local = self.by_city.get(kind, {}).get(city)
        if local and rng.random() < 0.9:
            return rng.choice(local)
        return rng.choice(self.sites[kind])


def _days(rng: random.Random, low: float, high: float) -> dt.timedelta:
    return dt.timedelta(days=rng.uniform(low, high))


def plan_life(province: Province, serial: str, rng: random.Random, now: dt.datetime) -> tuple[Battery, str]:
    """A battery and its life (all of it in the past), and how that life ends."""
    producer = rng.choice(province.producers)
    model: Model = rng.choice(province.network.models[producer.operator.participant_id])
    ref = fpb.BatteryRef(
        scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=producer.operator.credit_code, value=serial
    )
    in_use = rng.random() < IN_USE_SHARE
    if in_use:
        born = now - _days(rng, 70, 400)
        collected = now
    else:
        collected = now - _days(rng, 30, 90)
        born = collected - _days(rng, 120, 1500)
    produced = dt.datetime.combine((born - _days(rng, 1, 30)).astimezone(CN).date(), dt.time(), dt.UTC)
    dealer = rng.choice(province.sites["dealer"])
    plan: list[Planned] = []
    t = born

    def add(site: Site, step: int, after: dt.timedelta, **extra: Any) -> None:
        nonlocal t
        t = t + after
        plan.append(Planned(site, step, t, extra))

    hour = dt.timedelta(hours=1)
    add(producer, fpb.BIZ_STEP_COMMISSIONING, dt.timedelta(0), model_id=model.model_id, production_date=_ts(produced))
    delivery = [fpb.BusinessTransaction(transaction_type="DELIVERY_NOTE", transaction_id=f"DN-{serial}")]
    add(
        producer, fpb.BIZ_STEP_SHIPPING, _days(rng, 0.5, 5),
        destination_facility_id=dealer.facility_id, business_transactions=delivery,
    )  # fmt: skip
    add(
        dealer, fpb.BIZ_STEP_RECEIVING, _days(rng, 0.2, 3),
        source_facility_id=producer.facility_id, business_transactions=delivery,
    )  # fmt: skip
    add(dealer, fpb.BIZ_STEP_RETAIL_SELLING, _days(rng, 1, 60))
    if in_use:
        return Battery(ref, plan), "in use"

    mode, _, order = rng.choices(MODES, weights=[weight for _, weight, _ in MODES])[0]
    outlet = province.near("outlet", dealer.city, rng)
    t = collected
    orders = [fpb.BusinessTransaction(transaction_type=order, transaction_id=f"{order[:2]}-{serial}")] if order else []
    add(
        outlet, fpb.BIZ_STEP_COLLECTING, dt.timedelta(0),
        collection_mode=mode, disposition=fpb.DISPOSITION_WASTE, business_transactions=orders,
    )  # fmt: skip
    legs = 0

    def leg(source: Site, destination: Site, wait: dt.timedelta) -> None:
        nonlocal legs
        legs += 1
        manifest = [fpb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id=f"ZY-{serial}-{legs}")]
        add(
            source, fpb.BIZ_STEP_SHIPPING, wait,
            destination_facility_id=destination.facility_id, business_transactions=manifest,
        )  # fmt: skip
        add(
            destination, fpb.BIZ_STEP_RECEIVING, rng.uniform(2, 48) * hour,
            source_facility_id=source.facility_id, business_transactions=manifest,
        )  # fmt: skip

    route = rng.random()
    recycler = rng.choice(province.sites["recycler"])
    if route < 0.85:
        storage = province.near("storage", outlet.city, rng)
        leg(outlet, storage, _days(rng, 0.5, 3))
        add(storage, fpb.BIZ_STEP_STORING, rng.uniform(0.5, 3) * hour)
        held = storage
    else:
        held = outlet
    if route < 0.7 or route >= 0.85:
        sorter = province.near("sorter", held.city, rng)
        leg(held, sorter, _days(rng, 1, 10))
        if rng.random() < 0.5:
            soh = round(rng.uniform(35, 78), 1)
            reason = "CAPACITY_FADE_OVER_50PCT" if soh < 50 else "SAFE_LIFE_EXPIRED"
            add(
                sorter, fpb.BIZ_STEP_HEALTH_ASSESSING, rng.uniform(1, 6) * hour,
                health_assessment=fpb.HealthAssessment(
                    measurements=[
                        fpb.Measurement(measurement_type="SOH_PCT", value=soh),
                        fpb.Measurement(measurement_type="WEIGHT_KG", value=round(model.mass_kg, 2)),
                    ],
                    verdict=fpb.HEALTH_VERDICT_RECOMMEND_SCRAP,
                    reasons=[reason],
                ),
            )  # fmt: skip
        add(sorter, fpb.BIZ_STEP_SORTING, rng.uniform(1, 8) * hour)
        held = sorter
    leg(held, recycler, _days(rng, 1, 5))
    if rng.random() < 0.6:
        add(recycler, fpb.BIZ_STEP_DISCHARGING, rng.uniform(2, 24) * hour)
    black_mass = round(model.mass_kg * rng.uniform(0.30, 0.36), 2)
    add(
        recycler, fpb.BIZ_STEP_DISMANTLING, rng.uniform(2, 24) * hour,
        outputs=[fpb.QuantityElement(product_class="black_mass", quantity=black_mass,
                                     unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)],
    )  # fmt: skip
    add(
        recycler, fpb.BIZ_STEP_RECYCLING, rng.uniform(6, 48) * hour,
        outputs=[fpb.QuantityElement(product_class="recovered_metals", quantity=round(black_mass * 0.4, 2),
                                     unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)],
    )  # fmt: skip
    return Battery(ref, plan), "recycled"


# ---- the load -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    rate: float  # items (events and readings) per second
    duration: float | None  # seconds; or
    events: int | None  # new flow events to send
    batch_share: float
    readings_share: float
    retry_share: float
    batch_size: int
    readings_per_call: int
    concurrency: int


@dataclass(slots=True)
class Item:
    event: fpb.FlowEvent
    operator: Enterprise
    battery: Battery | None  # None: a deliberate retry of an acknowledged event


@dataclass
class Buffer:
    since: float
    items: list[Item] = field(default_factory=list)


def _rejection(result: fpb.EventResult) -> str:
    if result.rule_hits:
        return ",".join(sorted({hit.rule_id for hit in result.rule_hits}))
    if result.field_problems:
        return f"INVALID_ARGUMENT {result.field_problems[0].field}"
    return ""


class Load:
    """Sends the mix at the rate and records every answer."""

    def __init__(
        self, front: Front, network: Network, mix: Mix, ledger: Ledger, stats: Stats, seed: int, tag: str
    ) -> None:
        self.front = front
        self.network = network
        self.mix = mix
        self.ledger = ledger
        self.stats = stats
        self.rng = random.Random(seed)
        self.tag = tag
        self.province = Province(network)
        self.ready: deque[Battery] = deque()
        self.buffers: dict[Enterprise, Buffer] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.pool: list[tuple[fpb.FlowEvent, Enterprise]] = []
        self.pool_next = 0
        self.reading_tokens = 0.0
        self.meter_turn = 0
        self.serials = 0
        self.now = dt.datetime.now(dt.UTC)
        self.stopped = False  # set by `stop()` (Ctrl-C): send nothing new, finish the calls in flight

    def stop(self) -> None:
        self.stopped = True

    # -- the schedule --

    async def run(self, on_tick: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        mix = self.mix
        started = loop.time()
        stop_at = started + mix.duration if mix.duration is not None else None
        last = started
        budget = 0.0
        self.stats.started = time.monotonic()
        while not self.stopped:
            now = loop.time()
            if stop_at is not None and now >= stop_at:
                break
            if mix.events is not None and self.stats.sent >= mix.events:
                break
            budget = min(budget + (now - last) * mix.rate, max(2.0, mix.rate * 0.2))
            last = now
            while budget >= 1.0 and len(self.inflight) < mix.concurrency:
                budget -= 1.0
                self._one()
                if mix.events is not None and self.stats.sent >= mix.events:
                    break
            self._flush(now, force=False)
            if on_tick is not None:
                on_tick()
            await asyncio.sleep(TICK_SECONDS)
        self._flush(loop.time(), force=True)
        while self.inflight:
            await asyncio.wait(set(self.inflight), timeout=0.5)
            self._flush(loop.time(), force=True)  # resends of throttled batches refill no buffer, but be sure
            if on_tick is not None:
                on_tick()
        self.stats.ended = time.monotonic()

    def _one(self) -> None:
        """Spend one unit of the budget: a meter reading, a deliberate retry or a battery's next event."""
        mix, rng = self.mix, self.rng
        if self.network.meters and rng.random() < mix.readings_share:
            self.reading_tokens += 1
            if self.reading_tokens >= mix.readings_per_call:
                if self._readings(mix.readings_per_call):
                    self.reading_tokens -= mix.readings_per_call
                else:
                    self.reading_tokens = min(self.reading_tokens, 2.0 * mix.readings_per_call)
            return
        if self.pool and rng.random() < mix.retry_share:
            event, operator = self.pool[rng.randrange(len(self.pool))]
            self.stats.retries_sent += 1
            self._route(Item(event, operator, None))
            return
        battery = self.ready.popleft() if self.ready else self._new_battery()
        event, planned = battery.event()
        self.stats.sent += 1
        self.stats.steps[fpb.BizStep.Name(planned.step).removeprefix("BIZ_STEP_")] += 1  # type: ignore[arg-type]
        if planned.step == fpb.BIZ_STEP_COLLECTING:
            self.stats.modes[fpb.CollectionMode.Name(event.collection_mode).removeprefix("COLLECTION_MODE_")] += 1
        self._route(Item(event, planned.site.operator, battery))

    def _new_battery(self) -> Battery:
        self.serials += 1
        battery, fate = plan_life(self.province, f"LG{self.tag}{self.serials:08d}", self.rng, self.now)
        self.stats.batteries += 1
        if fate == "in use":
            self.stats.in_use += 1
        return battery

    def _route(self, item: Item) -> None:
        self.stats.note_sent(1)
        if self.rng.random() < self.mix.batch_share:
            self.stats.batch_events += item.battery is not None
            buffer = self.buffers.get(item.operator)
            if buffer is None:
                buffer = self.buffers[item.operator] = Buffer(asyncio.get_running_loop().time())
            buffer.items.append(item)
            if len(buffer.items) >= self.mix.batch_size:
                del self.buffers[item.operator]
                self._spawn(self._report_batch(item.operator, buffer.items))
        else:
            self.stats.unary_events += item.battery is not None
            self._spawn(self._report_one(item))

    def _flush(self, now: float, *, force: bool) -> None:
        due = [op for op, buffer in self.buffers.items() if force or now - buffer.since >= BATCH_LINGER_SECONDS]
        for operator in due:
            buffer = self.buffers.pop(operator)
            self._spawn(self._report_batch(operator, buffer.items))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.stats.client_failures[f"{type(error).__name__}: {error}"[:200]] += 1

    # -- calls --

    async def _call(self, method: str, send: Callable[[], Awaitable[Any]]) -> tuple[Any, grpc.aio.AioRpcError | None]:
        """(reply, None), or (None, the final error): throttling waited out, transient errors sent again."""
        attempts = throttles = 0
        while True:
            self.stats.calls[method] += 1
            started = time.perf_counter()
            try:
                reply = await send()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code is grpc.StatusCode.RESOURCE_EXHAUSTED and throttles < MAX_THROTTLED:
                    # over the key's rate: wait what RetryInfo says, spread out, as the calls sharing the key
                    # all wake for the same token
                    throttles += 1
                    self.stats.throttled += 1
                    delay = retry_delay(error) or 0.1
                    await asyncio.sleep(delay * (1 + self.rng.random() * min(throttles, 8)))
                    continue
                if code not in ANSWERS:
                    self.stats.errors[code.name] += 1
                self.stats.latency(method, started)
                if code in TRANSIENT and attempts + 1 < MAX_ATTEMPTS:
                    attempts += 1
                    self.stats.resent += 1
                    await asyncio.sleep(0.25 * 2**attempts)
                    continue
                return None, error
            self.stats.latency(method, started)
            return reply, None

    async def _report_one(self, item: Item) -> None:
        request = fpb.ReportEventRequest(event=item.event)
        reply, error = await self._call(
            "ReportEvent",
            lambda: self.front.flows.ReportEvent(
                request, metadata=item.operator.metadata, timeout=CALL_TIMEOUT_SECONDS
            ),
        )
        if error is None:
            self._settle([(item, reply.result.outcome, _rejection(reply.result))])
        else:
            self._settle([(item, *self._refusal(error))])

    async def _report_batch(self, operator: Enterprise, items: list[Item]) -> None:
        request = fpb.ReportEventsRequest(
            events=[item.event for item in items], error_behaviour=fpb.ERROR_BEHAVIOUR_PROCEED
        )
        reply, error = await self._call(
            "ReportEvents",
            lambda: self.front.flows.ReportEvents(request, metadata=operator.metadata, timeout=CALL_TIMEOUT_SECONDS),
        )
        if error is not None:
            refusal = self._refusal(error)
            self._settle([(item, *refusal) for item in items])
            return
        by_id = {result.event_id: result for result in reply.results}
        settled = []
        for item in items:
            result = by_id.get(item.event.event_id)
            if result is None:
                settled.append((item, error_outcome(grpc.StatusCode.DATA_LOSS), "no result for the event"))
            else:
                settled.append((item, result.outcome, _rejection(result)))
        self._settle(settled)

    @staticmethod
    def _refusal(error: grpc.aio.AioRpcError) -> tuple[int, str]:
        """A single report's refusal as an event outcome: rules and bad fields are rejections, a conflict is one."""
        code = error.code()
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            return fpb.EVENT_OUTCOME_REJECTED, error_reason(error) or "FAILED_PRECONDITION"
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            violations = field_violations(error)
            return fpb.EVENT_OUTCOME_REJECTED, f"INVALID_ARGUMENT {violations[0].field if violations else ''}".strip()
        if code is grpc.StatusCode.ALREADY_EXISTS:
            return fpb.EVENT_OUTCOME_CONFLICT, "ALREADY_EXISTS"
        return error_outcome(code), (error.details() or "")[:200]

    def _settle(self, answers: Sequence[tuple[Item, int, str]]) -> None:
        stats = self.stats
        rows = []
        for item, outcome, reason in answers:
            name = outcome_name(outcome)
            if item.battery is None:
                stats.retry_answers[name] += 1
                continue
            rows.append((item.event.event_id, outcome, reason))
            stats.outcomes[name] += 1
            battery = item.battery
            if outcome in ACKNOWLEDGED:
                stats.acknowledged += 1
                if outcome == fpb.EVENT_OUTCOME_QUARANTINED:
                    stats.quarantined[reason or "?"] += 1
                self._remember(item)
            elif outcome == fpb.EVENT_OUTCOME_REJECTED:
                stats.rejected[reason or "?"] += 1
            if outcome in (fpb.EVENT_OUTCOME_ACCEPTED, fpb.EVENT_OUTCOME_DUPLICATE):
                battery.index += 1
                if battery.done:
                    stats.recycled += battery.plan[-1].step == fpb.BIZ_STEP_RECYCLING
                else:
                    self.ready.append(battery)
            else:
                stats.stopped += 1
        self.ledger.record(rows)

    def _remember(self, item: Item) -> None:
        entry = (item.event, item.operator)
        if len(self.pool) < RETRY_POOL:
            self.pool.append(entry)
        else:
            self.pool[self.pool_next] = entry
            self.pool_next = (self.pool_next + 1) % RETRY_POOL

    # -- meter readings --

    def _readings(self, count: int) -> bool:
        """Send the next `count` readings of a free meter; False when every meter is busy (or has caught up)."""
        meters = self.network.meters
        horizon = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=15)
        for offset in range(len(meters)):
            meter = meters[(self.meter_turn + offset) % len(meters)]
            if meter.busy or meter.cursor + count * meter.interval > horizon:
                continue
            self.meter_turn = (self.meter_turn + offset + 1) % len(meters)
            readings = []
            for _ in range(count):
                start = meter.cursor
                meter.cursor = start + meter.interval
                local_hour = start.astimezone(CN).hour + start.minute / 60
                profile = 1.0 + 0.15 * math.sin((local_hour - 9) / 24 * 2 * math.pi)
                kwh = meter.base_kwh * meter.interval.total_seconds() / 3600 * profile * self.rng.uniform(0.97, 1.03)
                readings.append(epb.Reading(start_time=_ts(start), end_time=_ts(meter.cursor), value=round(kwh, 3)))
            meter.busy = True
            self.stats.readings_sent += count
            self.stats.note_sent(count)
            upload = self.rng.random() < self.mix.batch_share
            self._spawn(self._send_readings(meter, readings, upload))
            return True
        return False

    async def _send_readings(self, meter: MeterLine, readings: list[epb.Reading], upload: bool) -> None:
        metadata = meter.operator.metadata
        try:
            if upload:
                half = max(1, len(readings) // 2)
                messages = [
                    epb.UploadReadingsRequest(meter_id=meter.meter_id, readings=part)
                    for part in (readings[:half], readings[half:])
                    if part
                ]
                reply, error = await self._call(
                    "UploadReadings",
                    lambda: self.front.energy.UploadReadings(
                        iter(messages), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
                    ),
                )
                if error is None:
                    stored = int(reply.inserted + reply.updated + reply.unchanged)
                    meter.acknowledged += stored
                    self.stats.readings_acknowledged += stored
                    for problem in reply.problems:
                        self.stats.readings_rejected[f"{problem.code} {problem.message}"[:120]] += len(readings) // 2
            else:
                request = epb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=readings)
                reply, error = await self._call(
                    "UpsertReadings",
                    lambda: self.front.energy.UpsertReadings(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS),
                )
                if error is None:
                    stored = int(reply.inserted + reply.updated + reply.unchanged)
                    meter.acknowledged += stored
                    self.stats.readings_acknowledged += stored
            if error is not None:
                if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    violations = field_violations(error)
                    reason = violations[0].description if violations else error.details() or ""
                    self.stats.readings_rejected[f"INVALID_ARGUMENT {reason}"[:120]] += len(readings)
                else:
                    self.stats.readings_errors += len(readings)
        finally:
            meter.busy = False
