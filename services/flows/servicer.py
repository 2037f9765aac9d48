"""The flows service's gRPC servicer: who may do what, and the translation between requests and the capture,
the store and the domain. Errors are raised as meshkit DomainErrors; the shared interceptor turns them into
google.rpc statuses. Nothing is written when a check fails."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.flows.v1 import flows_pb2_grpc
from meshkit.caller import Caller, caller_of, require_any_role, require_authenticated
from meshkit.config import Component
from meshkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from meshkit.ids import new_id
from meshkit.paging import decode_integer_token, encode_token, page_size
from meshkit.server import ServiceRuntime
from meshkit.subjects import event_subject
from services.flows import alerts, capture, statistics, store, trace
from services.flows.directory_view import DirectoryView
from services.flows.domain import (
    RULES,
    BatteryId,
    CustodyState,
    Decision,
    RuleConfig,
    issue_platform_code,
)
from services.flows.domain.directory import PRODUCER_ROLES, REVERSE_CHAIN_FACILITIES
from services.flows.domain.public import StatusFacts, public_view
from services.flows.ingest import CaptureQueue
from services.flows.mapping import (
    battery_ref_from_proto,
    battery_ref_to_proto,
    biz_step_from_proto,
    declaration_from_proto,
    declaration_to_proto,
    public_view_to_proto,
    rule_to_proto,
    state_to_proto,
    timestamp_from_proto,
)
from services.flows.tables import (
    BatteryModelRow,
    BatteryRow,
    ErrorDeclarationRow,
    FlowEventRow,
    PlatformCodeRow,
    QuarantineReleaseRow,
)
from services.flows.wakeups import EventWakeups

Context = grpc.aio.ServicerContext[Any, Any]

UPLOAD_CHUNK = 500
MAX_UPLOAD_PROBLEMS = 1_000
MAX_PLATFORM_CODES = 1_000
DIRECTORY_WAIT_SECONDS = 5.0
SUBSCRIPTION_POLL_SECONDS = 1.0
# Roles that take in batteries without readable codes and so may ask for platform codes.
INTAKE_ROLES = (
    "RECYCLING_OUTLET_OPERATOR",
    "COOP_STATION_OPERATOR",
    "TEMP_STORAGE_OPERATOR",
    "SORTING_CENTER_OPERATOR",
    "RECYCLING_ENTERPRISE",
    "DEALER",
    "REPAIR_SHOP",
    "RENTAL_SWAP_OPERATOR",
)
OVERSIGHT_ROLES = ("REGULATOR", "PLATFORM_OPERATOR")


def region_of(caller: Caller) -> str:
    """The division prefix a caller oversees: "" (all) for platform operators, the region for regulators."""
    if caller.is_platform_operator:
        return ""
    return caller.region_prefix()


def require_oversight(caller: Caller, action: str) -> str:
    require_any_role(caller, OVERSIGHT_ROLES, action)
    return region_of(caller)


def battery_key(ref: pb.BatteryRef, field: str = "battery_ref") -> BatteryId:
    battery, problems = battery_ref_from_proto(ref, field)
    if battery is None or problems:
        raise InvalidArgument(problems or [FieldViolation(field, "required")])
    return battery


@dataclass
class FlowServicer(flows_pb2_grpc.FlowServiceServicer):
    def __init__(self, runtime: ServiceRuntime, directory: DirectoryView, config: RuleConfig) -> None:
        self.runtime = runtime
        self.directory = directory
        self.config = config
        self.wakeups = EventWakeups(
            bus=lambda: runtime.bus if runtime.bus.connected else None,
            subject=event_subject(runtime.settings.province, Component.FLOWS, pb.FlowEventRecorded),
        )
        self.captures = CaptureQueue(runtime, config, self.wakeups.notify)

    @property
    def database(self) -> Any:
        return self.runtime.database

    async def _directory(self) -> DirectoryView:
        if not await self.directory.wait_ready(DIRECTORY_WAIT_SECONDS):
            raise Unavailable("the registry directory is not loaded yet; retry shortly", reason="DIRECTORY_NOT_READY")
        return self.directory

    # ---- reporting ----------------------------------------------------------------------------

    async def ReportEvent(self, request: pb.ReportEventRequest, context: Context) -> pb.ReportEventResponse:
        reporter = require_authenticated(caller_of(context))
        self.runtime.refuse_when_backlogged()
        judged = await self.captures.report_one(await self._directory(), request.event, reporter)
        if judged.outcome == pb.EVENT_OUTCOME_CONFLICT:
            raise AlreadyExists(
                "event", judged.event_id, f"event {judged.event_id} was already reported with other content"
            )
        if judged.outcome == pb.EVENT_OUTCOME_REJECTED:
            if judged.problems:
                raise InvalidArgument(judged.problems)
            rejecting = [h for h in judged.hits if h.decision is Decision.REJECT]
            raise FailedPrecondition(
                "; ".join(f"{h.rule_id}: {h.message}" for h in rejecting),
                reason=rejecting[0].rule_id,
                metadata={"rule_ids": ",".join(sorted({h.rule_id for h in rejecting})), "event_id": judged.event_id},
            )
        return pb.ReportEventResponse(result=judged.result())

    async def ReportEvents(self, request: pb.ReportEventsRequest, context: Context) -> pb.ReportEventsResponse:
        reporter = require_authenticated(caller_of(context))
        self.runtime.refuse_when_backlogged()
        if len(request.events) > capture.MAX_BATCH:
            raise InvalidArgument([FieldViolation("events", f"at most {capture.MAX_BATCH} events per batch")])
        if not request.events:
            raise InvalidArgument([FieldViolation("events", "at least one event")])
        if request.error_behaviour not in pb.ErrorBehaviour.values():
            raise InvalidArgument([FieldViolation("error_behaviour", "unknown value")])
        # ROLLBACK unless PROCEED is asked for: storing half a batch must be a deliberate choice.
        rollback = request.error_behaviour != pb.ERROR_BEHAVIOUR_PROCEED
        result = await self.captures.report_batch(
            await self._directory(), list(request.events), reporter, rollback_on_error=rollback
        )
        return pb.ReportEventsResponse(results=result.results(), rolled_back=result.rolled_back)

    async def UploadEvents(
        self, request_iterator: AsyncIterator[pb.UploadEventsRequest], context: Context
    ) -> pb.UploadEventsResponse:
        reporter = require_authenticated(caller_of(context))
        summary = pb.UploadEventsResponse()
        pending: list[pb.FlowEvent] = []

        async def flush() -> None:
            self.runtime.refuse_when_backlogged()  # a chunk already stored stays stored; the client resumes
            result = await self.captures.report_batch(
                await self._directory(), pending, reporter, rollback_on_error=False
            )
            for judged in result.judged:
                outcome = judged.outcome
                summary.accepted += outcome == pb.EVENT_OUTCOME_ACCEPTED
                summary.duplicates += outcome == pb.EVENT_OUTCOME_DUPLICATE
                summary.conflicts += outcome == pb.EVENT_OUTCOME_CONFLICT
                summary.rejected += outcome == pb.EVENT_OUTCOME_REJECTED
                summary.quarantined += outcome == pb.EVENT_OUTCOME_QUARANTINED
                shown = len(summary.problems) < MAX_UPLOAD_PROBLEMS
                if shown and outcome not in (pb.EVENT_OUTCOME_ACCEPTED, pb.EVENT_OUTCOME_DUPLICATE):
                    summary.problems.append(judged.result())
            pending.clear()

        async for item in request_iterator:
            summary.received += 1
            pending.append(item.event)
            if len(pending) >= UPLOAD_CHUNK:
                await flush()
        if pending:
            await flush()
        return summary

    async def DeclareError(self, request: pb.DeclareErrorRequest, context: Context) -> pb.DeclareErrorResponse:
        caller = caller_of(context)
        declarer = require_authenticated(caller)
        now = dt.datetime.now(dt.UTC)
        declaration, problems = declaration_from_proto(request, declared_by=declarer, now=now)
        if declaration is None or problems:
            raise InvalidArgument(problems)
        directory = await self._directory()
        async with self.captures.exclusive() as session:
            row = await store.event_row(session, request.event_id)
            if row is None:
                raise NotFound("event", request.event_id)
            if row.reporter_id != declarer and not caller.is_platform_operator:
                raise PermissionDenied("only the reporter of an event (or a platform operator) declares it in error")
            if row.declared:
                raise FailedPrecondition(
                    f"event {row.event_id} is already declared in error", reason="ALREADY_DECLARED"
                )
            correctives = {i: await store.event_row(session, i) for i in declaration.corrective_event_ids}
            missing = sorted(i for i, r in correctives.items() if r is None)
            if missing:
                raise FailedPrecondition(
                    "corrective events are reported first, then named: not found " + ", ".join(missing),
                    reason="CORRECTIVE_EVENT_NOT_FOUND",
                    metadata={"missing": ",".join(missing)},
                )
            session.add(
                ErrorDeclarationRow(
                    event_id=row.event_id,
                    reason=declaration.reason.value,
                    corrective_event_ids=",".join(declaration.corrective_event_ids),
                    explanation=declaration.explanation,
                    declared_by=declarer,
                    declaration_time=declaration.declaration_time,
                )
            )
            row.declared = True  # the ORM object: later reads in this transaction see it (autoflush)
            session.add(row)
            capture.stage_error_declared(session, self.runtime.settings, row.event_id, declaration)
            await store.apply_ledger(session, undo_ledger(row))
            keys = set(store.battery_keys_of(store.stored_event(row.payload)))
            for corrective in correctives.values():
                if corrective is not None:
                    keys |= set(store.battery_keys_of(store.stored_event(corrective.payload)))
            states = await capture.recompute(session, sorted(keys), directory, self.config)
        return pb.DeclareErrorResponse(recomputed=[state_to_proto(s) for _, s in sorted(states.items())])

    # ---- batteries ----------------------------------------------------------------------------

    async def RegisterBatteryModel(
        self, request: pb.RegisterBatteryModelRequest, context: Context
    ) -> pb.RegisterBatteryModelResponse:
        caller = caller_of(context)
        require_any_role(caller, sorted(PRODUCER_ROLES), "registering a battery model")
        model = request.model
        problems = model_violations(model)
        if problems:
            raise InvalidArgument(problems)
        row = BatteryModelRow(
            model_id=new_id(),
            producer_id=caller.participant_id or "",
            model_code=model.model_code.strip(),
            chemistry=pb.Chemistry.Name(model.chemistry).removeprefix("CHEMISTRY_"),
            nominal_voltage_v=model.nominal_voltage_v,
            capacity_ah=model.capacity_ah,
            energy_wh=model.energy_wh,
            mass_kg=model.mass_kg,
            safe_service_life_years=model.safe_service_life_years,
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            async with self.database.transaction() as session:
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExists(
                "battery model", row.model_code, "this producer already registered the model code"
            ) from error
        return pb.RegisterBatteryModelResponse(model=model_message(row))

    def _reads_whole_without_query(self, caller: Caller, row: Any) -> bool:
        """The part of :meth:`_may_read` that needs no query: operators of the battery's region, its producer and
        its holder."""
        if caller.is_platform_operator:
            return True
        if caller.is_regulator:
            county = row.collected_county if row is not None else ""
            facility = self.directory.facility(row.holder_facility_id) if row is not None else None
            places = {county, facility.county_code if facility else ""} - {""}
            if not places or any(caller.supervises(p) for p in places):
                return True
        participant = caller.participant_id or ""
        return row is not None and bool(participant) and participant in (row.producer_id, row.holder_id)

    async def _may_read(self, session: AsyncSession, caller: Caller, key: str, row: Any) -> bool:
        """Whether the caller reads the battery's whole record (its trace, every event of it): operators every
        battery of their region; an enterprise those it produced, holds or reported an event of."""
        if self._reads_whole_without_query(caller, row):
            return True
        participant = caller.participant_id or ""
        return bool(participant) and await store.has_reported_for(session, key, participant)

    async def _readable(self, session: AsyncSession, caller: Caller, key: str, row: Any) -> None:
        if not await self._may_read(session, caller, key, row):
            raise PermissionDenied("this battery's records are not visible to the caller")

    async def GetBattery(self, request: pb.GetBatteryRequest, context: Context) -> pb.GetBatteryResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        battery = battery_key(request.battery_ref)
        async with self.database.session() as session:
            row = await store.battery_row(session, battery.urn)
            if row is None:
                raise NotFound("battery", battery.urn)
            await self._readable(session, caller, battery.urn, row)
            states, _ = await store.load_states(session, [battery.urn])
            model = await session.get(BatteryModelRow, row.model_id) if row.model_id else None
        response = pb.GetBatteryResponse(state=state_to_proto(states[battery.urn]))
        if model is not None:
            response.model.CopyFrom(model_message(model))
        return response

    async def GetBatteryTrace(self, request: pb.GetBatteryTraceRequest, context: Context) -> pb.GetBatteryTraceResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        battery = battery_key(request.battery_ref)
        key = battery.urn
        # The battery's row comes with its history: one statement, on one synchronous connection (Database.read).
        source = await self.database.read(functools.partial(store.read_trace_source, key=key))
        row = source.battery
        if row is None or not self._reads_whole_without_query(caller, row):
            async with self.database.session() as session:
                if row is None:  # a battery without events has no history
                    row = await store.battery_row(session, key)
                if row is None:
                    raise NotFound("battery", key)
                await self._readable(session, caller, key, row)
        if source.recorded is not None:
            return trace.recorded_trace(source.recorded, row, self.directory, battery)
        assert source.history is not None
        return trace.battery_trace(source.history, self.directory, self.config, battery)

    async def GetBatteryStatus(
        self, request: pb.GetBatteryStatusRequest, context: Context
    ) -> pb.GetBatteryStatusResponse:
        # Public: the caller is not read, so an authenticated caller gets exactly what an anonymous one gets.
        battery = battery_key(request.battery_ref)
        # One primary-key read, on one synchronous connection (Database.read).
        row = await self.database.read(functools.partial(store.read_battery_row, key=battery.urn))
        return public_view_to_proto(public_view(self._status_facts(row)))

    def _status_facts(self, row: BatteryRow | None) -> StatusFacts | None:
        """The facts of the public status from a battery row and its holder's directory entry (in memory; a
        directory not loaded yet leaves the collection county)."""
        if row is None:
            return None
        holder = self.directory.facility(row.holder_facility_id) if row.holder_facility_id else None
        return StatusFacts(
            state=CustodyState(row.state),
            phase=CustodyState(row.phase),
            last_event_time=row.last_event_time,
            holder_county=holder.county_code if holder is not None else "",
            collected_county=row.collected_county,
            handed_in=row.collected_at is not None
            or row.reached_recycler
            or (holder is not None and holder.facility_type in REVERSE_CHAIN_FACILITIES),
        )

    async def IssuePlatformCodes(
        self, request: pb.IssuePlatformCodesRequest, context: Context
    ) -> pb.IssuePlatformCodesResponse:
        caller = caller_of(context)
        require_any_role(caller, INTAKE_ROLES, "issuing platform codes")
        if not 1 <= request.count <= MAX_PLATFORM_CODES:
            raise InvalidArgument([FieldViolation("count", f"1 to {MAX_PLATFORM_CODES}")])
        now = dt.datetime.now(dt.UTC)
        rng = secrets.SystemRandom()
        issued: list[BatteryId] = []
        async with self.database.transaction() as session:
            while len(issued) < request.count:
                wanted = [
                    issue_platform_code(self.runtime.settings.province, rng=rng)
                    for _ in range(request.count - len(issued))
                ]
                taken = set(
                    (
                        await session.exec(
                            select(PlatformCodeRow.code).where(col(PlatformCodeRow.code).in_([b.value for b in wanted]))
                        )
                    ).all()
                )
                fresh = {b.value: b for b in wanted if b.value not in taken}
                for code in fresh:
                    session.add(PlatformCodeRow(code=code, issued_to=caller.participant_id or "", issued_at=now))
                issued += fresh.values()
        return pb.IssuePlatformCodesResponse(batteries=[battery_ref_to_proto(b) for b in issued])

    async def ReleaseQuarantine(
        self, request: pb.ReleaseQuarantineRequest, context: Context
    ) -> pb.ReleaseQuarantineResponse:
        caller = caller_of(context)
        require_oversight(caller, "releasing a quarantine")
        battery = battery_key(request.battery_ref)
        if len(request.note) > 500 or not request.note.strip():
            raise InvalidArgument([FieldViolation("note", "required, at most 500 characters: what the review found")])
        directory = await self._directory()
        async with self.captures.exclusive() as session:
            row = await store.battery_row(session, battery.urn)
            if row is None:
                raise NotFound("battery", battery.urn)
            facility = directory.facility(row.holder_facility_id)
            county = facility.county_code if facility else row.collected_county
            if county and not caller.supervises(county):
                raise PermissionDenied("the battery is outside the caller's region")
            if row.state != "QUARANTINED":
                raise FailedPrecondition(f"the battery is {row.state}, not quarantined", reason="NOT_QUARANTINED")
            session.add(
                QuarantineReleaseRow(
                    release_id=new_id(),
                    battery_key=battery.urn,
                    released_by=caller.participant_id or "",
                    released_at=dt.datetime.now(dt.UTC),
                    note=request.note.strip(),
                )
            )
            await session.flush()
            states = await capture.recompute(session, [battery.urn], directory, self.config)
        return pb.ReleaseQuarantineResponse(state=state_to_proto(states[battery.urn]))

    async def ListRules(self, request: pb.ListRulesRequest, context: Context) -> pb.ListRulesResponse:
        return pb.ListRulesResponse(rules=[rule_to_proto(rule) for rule in RULES])

    # ---- queries ------------------------------------------------------------------------------

    def _access(self, caller: Caller) -> store.EventAccess:
        """An enterprise's part of the event log: what it reported, and what happened at, left from or went to a
        facility it operates (the directory's operators, in memory)."""
        participant = caller.participant_id or ""
        return store.EventAccess(participant, self.directory.facilities_of(participant))

    async def _event_filter(self, request: pb.QueryEventsRequest, caller: Caller) -> store.EventFilter:
        """The request's filters and what the caller may see: its region for a regulator, everything for a platform
        operator, and for an enterprise its part of the log (:meth:`_access`), or all the events of the battery
        asked for when it may read that battery whole (as GetBatteryTrace: producer, holder or a reporter of it)."""
        problems: list[FieldViolation] = []
        times: dict[str, dt.datetime | None] = {}
        for name in ("event_time_from", "event_time_to", "record_time_from", "record_time_to"):
            if request.HasField(name):
                moment, found = timestamp_from_proto(getattr(request, name), name)
                problems += found
                times[name] = moment
            else:
                times[name] = None
        steps = []
        for i, number in enumerate(request.biz_steps):
            step = biz_step_from_proto(number)
            if step is None:
                problems.append(FieldViolation(f"biz_steps[{i}]", "unknown or unspecified business step"))
            else:
                steps.append(step.value)
        prefix = request.division_prefix.strip()
        if prefix and (not prefix.isdigit() or len(prefix) not in (2, 4, 6)):
            problems.append(FieldViolation("division_prefix", "2, 4 or 6 digits"))
        key = ""
        if request.HasField("battery"):
            battery, found = battery_ref_from_proto(request.battery, "battery")
            problems += found
            key = battery.urn if battery else ""
        if problems:
            raise InvalidArgument(problems)
        access: store.EventAccess | None = None
        oversight = caller.is_platform_operator or caller.is_regulator
        if not oversight:
            await self._directory()  # which facilities the caller operates
            access = self._access(caller)
            if key:
                async with self.database.session() as session:
                    row = await store.battery_row(session, key)
                    if row is not None and await self._may_read(session, caller, key, row):
                        access = None
        return store.EventFilter(
            biz_steps=tuple(steps),
            event_time_from=times["event_time_from"],
            event_time_to=times["event_time_to"],
            record_time_from=times["record_time_from"],
            record_time_to=times["record_time_to"],
            facility_id=request.facility_id,
            source_facility_id=request.source_facility_id,
            destination_facility_id=request.destination_facility_id,
            battery_key=key,
            division_prefix=prefix,
            access=access,
            region_prefix=region_of(caller) if oversight else "",
        )

    async def QueryEvents(self, request: pb.QueryEventsRequest, context: Context) -> pb.QueryEventsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        event_filter = await self._event_filter(request, caller)
        # A page token is bound to the filters (and the caller) it was issued for.
        query = pb.QueryEventsRequest()
        query.CopyFrom(request)
        query.ClearField("page_token")
        query.ClearField("page_size")
        fingerprint = {"q": query.SerializeToString(deterministic=True).hex(), "who": caller.participant_id}
        after = decode_integer_token(request.page_token, fingerprint)
        async with self.database.session() as session:
            rows = await store.query_events(session, event_filter, after_seq=after or 0, limit=limit + 1)
            declared = await store.declarations(session, [r.event_id for r in rows[:limit] if r.declared])
        token = encode_token(str(rows[limit - 1].seq), fingerprint) if len(rows) > limit else ""
        return pb.QueryEventsResponse(events=[stored_message(r, declared) for r in rows[:limit]], next_page_token=token)

    async def SubscribeEvents(
        self, request: pb.SubscribeEventsRequest, context: Context
    ) -> AsyncIterator[pb.SubscribeEventsResponse]:
        caller = caller_of(context)
        require_authenticated(caller)
        query = pb.QueryEventsRequest(biz_steps=request.biz_steps, division_prefix=request.division_prefix)
        event_filter = await self._event_filter(query, caller)
        token = request.resume_token.strip()
        if token and not (token.isascii() and token.isdigit() and len(token) <= 18):
            raise InvalidArgument([FieldViolation("resume_token", "a value from an earlier response")])
        async with self.database.session() as session:
            position = int(token) if token else await store.latest_seq(session)
        async with self.wakeups.listening():
            while True:
                if event_filter.access is not None:  # the facilities operated now: the directory changes
                    event_filter = dataclasses.replace(event_filter, access=self._access(caller))
                async with self.database.session() as session:
                    rows = await store.query_events(session, event_filter, after_seq=position, limit=500)
                    declared = await store.declarations(session, [r.event_id for r in rows if r.declared])
                for row in rows:
                    position = row.seq or position
                    yield pb.SubscribeEventsResponse(event=stored_message(row, declared), resume_token=str(position))
                if len(rows) < 500:
                    await self.wakeups.wait(SUBSCRIPTION_POLL_SECONDS)

    # ---- alerts and statistics ----------------------------------------------------------------

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Context) -> pb.ListAlertsResponse:
        region = require_oversight(caller_of(context), "listing alerts")
        async with self.database.session() as session:
            return await alerts.list_alerts(session, request, region_prefix=region)

    async def AcknowledgeAlert(
        self, request: pb.AcknowledgeAlertRequest, context: Context
    ) -> pb.AcknowledgeAlertResponse:
        caller = caller_of(context)
        region = require_oversight(caller, "acknowledging alerts")
        async with self.database.transaction() as session:
            row = await alerts.acknowledge_alert(
                session,
                self.runtime.settings,
                request.alert_id,
                by=caller.participant_id or "",
                note=request.note,
                now=dt.datetime.now(dt.UTC),
                region_prefix=region,
            )
            return pb.AcknowledgeAlertResponse(alert=alerts.alert_to_proto(row))

    async def GetDispatchStatistics(
        self, request: pb.GetDispatchStatisticsRequest, context: Context
    ) -> pb.GetDispatchStatisticsResponse:
        return await answer_dispatch_statistics(self.database, caller_of(context), request)


async def answer_dispatch_statistics(
    database: Any, caller: Caller, request: pb.GetDispatchStatisticsRequest
) -> pb.GetDispatchStatisticsResponse:
    """GetDispatchStatistics for an oversight caller whose region holds the division (a province's flows service
    and the national view answer it alike)."""
    require_oversight(caller, "reading dispatch statistics")
    problems = statistics.statistics_violations(request)
    if problems:
        raise InvalidArgument(problems)
    if not caller.supervises(request.division_code.ljust(6, "0")):
        raise PermissionDenied("the division is outside the caller's region")
    start = request.period_start.ToDatetime(tzinfo=dt.UTC)
    end = request.period_end.ToDatetime(tzinfo=dt.UTC)
    async with database.session() as session:
        figures = await statistics.dispatch_statistics(session, request.division_code, start, end)
    return statistics.figures_to_proto(figures)


# ---- helpers ------------------------------------------------------------------------------------


def outcome_number(name: str) -> pb.EventOutcome.ValueType:
    return pb.EventOutcome.Value(f"EVENT_OUTCOME_{name}")


def stored_message(row: FlowEventRow, declared: dict[str, Any]) -> pb.FlowEvent:
    """The stored event as clients see it: what was reported plus the platform's output-only fields."""
    message = pb.FlowEvent.FromString(row.payload)
    if row.event_id in declared:
        message.error_declaration.CopyFrom(declaration_to_proto(declared[row.event_id]))
    return message


def undo_ledger(row: FlowEventRow) -> dict[str, store.LedgerDelta]:
    judged = capture.Judged(
        index=0,
        event_id=row.event_id,
        event=store.stored_event(row.payload),
        facility_type=row.facility_type,
        county_code=row.county_code,
        mass_kg=row.mass_kg,
        units=row.battery_count,
    )
    return capture.ledger_effects(judged, sign=-1)


def model_violations(model: pb.BatteryModel) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    code = model.model_code.strip()
    if not code or len(code) > 64 or not code.isprintable():
        found.append(FieldViolation("model.model_code", "required, at most 64 printable characters"))
    if model.chemistry == pb.CHEMISTRY_UNSPECIFIED or model.chemistry not in pb.Chemistry.values():
        found.append(FieldViolation("model.chemistry", "required"))
    for name, upper in (
        ("nominal_voltage_v", 1_000.0),
        ("capacity_ah", 10_000.0),
        ("energy_wh", 1e6),
        ("mass_kg", 1_000.0),
    ):
        value = getattr(model, name)
        if not math.isfinite(value) or not 0 < value <= upper:
            found.append(FieldViolation(f"model.{name}", f"a number above 0 and at most {upper:g}"))
    if not 0 < model.safe_service_life_years <= 30:
        found.append(FieldViolation("model.safe_service_life_years", "1 to 30 years (GB 43854 marking)"))
    return found


def model_message(row: BatteryModelRow) -> pb.BatteryModel:
    return pb.BatteryModel(
        model_id=row.model_id,
        producer_id=row.producer_id,
        model_code=row.model_code,
        chemistry=pb.Chemistry.Value(f"CHEMISTRY_{row.chemistry}"),
        nominal_voltage_v=row.nominal_voltage_v,
        capacity_ah=row.capacity_ah,
        energy_wh=row.energy_wh,
        mass_kg=row.mass_kg,
        safe_service_life_years=row.safe_service_life_years,
    )
