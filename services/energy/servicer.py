"""The energy service's gRPC servicer: who may do what, and the translation between requests and the domain,
the ingest, the figures and the store. Errors are meshkit DomainErrors (the shared interceptor maps them to
google.rpc statuses); every write is one transaction, so a refused request leaves nothing behind.

Who may do what:
- sites are registry facilities of type DATA_CENTER or BASE_STATION, looked up in the registry's directory (the
  KV bucket, watched into memory); an unknown site is a field violation;
- an enterprise (TELECOM_OPERATOR or DATA_CENTER_OPERATOR) writes the records of the sites the directory says it
  operates, and reads them; a regulator reads the records of sites in its division and verifies evaluations
  there; a platform operator does everything. Catalogue entries are shared reference data: enterprises and
  platform operators add them, every authenticated caller reads them.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError

from greenmesh.energy.v1 import energy_pb2 as pb
from greenmesh.energy.v1 import energy_pb2_grpc
from meshkit.caller import Caller, caller_of, require_any_role, require_authenticated
from meshkit.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from meshkit.ids import new_id
from meshkit.paging import decode_integer_token, decode_token, encode_token, page_size
from meshkit.server import ServiceRuntime
from services.energy import evaluations, events, figures, ingest, plans, store
from services.energy.domain.catalogue import (
    RATED_DIMENSIONS,
    CatalogueEntry,
    CurrentKind,
    CurvePoint,
    EfficiencyCurve,
    GradeRating,
    PowerPort,
    TransformerLosses,
    catalogue_entry_violations,
    curve_violations,
    grade_violations,
    high_efficiency_basis,
)
from services.energy.domain.kpis import DEFAULT_DRIFT_THRESHOLD_PP, DEFAULT_DRIFT_WINDOWS, RedundancyScheme
from services.energy.domain.kpis import design_max_load_rate as design_max
from services.energy.domain.lifecycle import LifecycleState, require_transition
from services.energy.domain.readings import (
    Direction,
    MeterRole,
    MeterSpec,
    Period,
    meter_violations,
)
from services.energy.domain.savings import (
    EvaluationStatus,
    NonRoutineAdjustment,
    correct_evaluation,
    latest_verified,
    new_evaluation,
    revise_draft,
    verified_savings_totals,
    verify_evaluation,
)
from services.energy.domain.series import natural_aggregation, series_violations
from services.energy.domain.units import Dimension, Quantity, Unit, quantity_violations
from services.energy.mapping import (
    CURRENT_KINDS,
    DIRECTIONS,
    EQUIPMENT_CLASSES,
    HIGH_EFFICIENCY_BASES,
    IT_POINTS,
    LIFECYCLE_STATES,
    MEASURE_TYPES,
    METER_QUANTITIES,
    METER_ROLES,
    OPERATING_STATES,
    QUALITY_FLAGS,
    READING_MODES,
    REDUNDANCY_SCHEMES,
    SERIES_AGGREGATIONS,
    UNITS,
    VOLTAGE_CLASSES,
    date_from_proto,
    date_to_proto,
    duration_from_proto,
    duration_to_proto,
    field_problems,
    grade_from_proto,
    grade_to_proto,
    moment_to_proto,
    period_from_proto,
    period_to_proto,
    quantity_from_proto,
    quantity_to_proto,
    seconds_to_proto,
    utc,
)
from services.energy.tables import (
    AssetRow,
    AssetTransitionRow,
    CatalogueEntryRow,
    DriftFindingRow,
    EvaluationRow,
    IndependentSeriesRow,
    MeasureRow,
    MeterRow,
    MvPlanRow,
    PowerLinkRow,
    RedundancyGroupRow,
)
from services.flows.directory_view import DirectoryView
from services.flows.domain.directory import FacilityInfo

Context = grpc.aio.ServicerContext[Any, Any]
# A store query of interval values (readings or series values) keyed by start: (session, start_s=, end_s=, limit=).
IntervalFetch = Callable[..., Awaitable[list[tuple[int, int, float, float | None, int]]]]

ENTERPRISE_ROLES = frozenset({"TELECOM_OPERATOR", "DATA_CENTER_OPERATOR"})
CATALOGUE_ROLES = ("PLATFORM_OPERATOR", "TELECOM_OPERATOR", "DATA_CENTER_OPERATOR")
SITE_TYPES = frozenset({"DATA_CENTER", "BASE_STATION"})
DIRECTORY_WAIT_SECONDS = 5.0
MAX_UPLOAD_PROBLEMS = 100
CN = dt.timezone(dt.timedelta(hours=8), "CST")


def _fail(field: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)])


def _text(value: str, field: str, found: list[FieldViolation], *, limit: int, required: bool = False) -> str:
    text = value.strip()
    if required and not text:
        found.append(FieldViolation(field, f"required, at most {limit} characters"))
    elif len(text) > limit or not text.isprintable():
        found.append(FieldViolation(field, f"at most {limit} printable characters"))
    return text


def _prefixed(error: InvalidArgument, prefix: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(f"{prefix}{v.field}", v.description) for v in error.violations])


def today() -> dt.date:
    return dt.datetime.now(CN).date()


def scope_of(caller: Caller) -> store.Scope:
    if caller.is_platform_operator:
        return store.Scope()
    if caller.is_regulator:
        return store.Scope(division_prefix=caller.region_prefix())
    return store.Scope(operator_id=caller.participant_id or "\0")


def _division_prefix(text: str, field: str = "division_prefix") -> str:
    prefix = text.strip()
    if prefix and (not prefix.isdigit() or len(prefix) not in (2, 4, 6)):
        raise _fail(field, "2, 4 or 6 digits of a GB/T 2260 code")
    return prefix


def _narrowed(scope: store.Scope, prefix: str) -> store.Scope:
    """The caller's scope, narrowed to a requested division prefix (a regulator may not widen its own)."""
    if not prefix:
        return scope
    if scope.division_prefix and not prefix.startswith(scope.division_prefix):
        raise PermissionDenied("the division is outside the caller's region")
    return store.Scope(division_prefix=prefix, operator_id=scope.operator_id)


class EnergyServicer(energy_pb2_grpc.EnergyServiceServicer):
    def __init__(self, runtime: ServiceRuntime, directory: DirectoryView) -> None:
        self.runtime = runtime
        self.directory = directory

    @property
    def database(self) -> Any:
        return self.runtime.database

    # ---- who may do what --------------------------------------------------------------------------------------

    async def _directory(self) -> DirectoryView:
        if not await self.directory.wait_ready(DIRECTORY_WAIT_SECONDS):
            raise Unavailable("the registry directory is not loaded yet; retry shortly", reason="DIRECTORY_NOT_READY")
        return self.directory

    async def _site(self, site_id: str, field: str) -> FacilityInfo:
        """The registry facility behind a site id; a field violation unless it is a data centre or base station."""
        if not site_id.strip():
            raise _fail(field, "required: a registry facility id")
        facility = (await self._directory()).facility(site_id)
        if facility is None:
            raise _fail(field, f"unknown site {site_id!r}: not a facility in the registry")
        if facility.facility_type not in SITE_TYPES:
            raise _fail(field, f"the facility is a {facility.facility_type}, not a DATA_CENTER or BASE_STATION")
        return facility

    @staticmethod
    def _require_writer(caller: Caller, facility: FacilityInfo) -> None:
        require_authenticated(caller)
        if caller.is_platform_operator:
            return
        if caller.roles & ENTERPRISE_ROLES and facility.operator_id == caller.participant_id:
            return
        raise PermissionDenied(
            "only the site's operator (a telecom or data-centre operator) or a platform operator writes its records",
            metadata={"site_id": facility.facility_id},
        )

    @staticmethod
    def _require_reader(caller: Caller, operator_id: str, county_code: str) -> None:
        require_authenticated(caller)
        if caller.is_platform_operator:
            return
        if caller.is_regulator and county_code and caller.supervises(county_code):
            return
        if operator_id and caller.participant_id == operator_id:
            return
        raise PermissionDenied("these records are not visible to the caller")

    def _site_owner(self, site_id: str) -> tuple[str, str]:
        """(operator, county) of a site as the directory has it now ("" when it no longer knows the site)."""
        facility = self.directory.facility(site_id)
        return (facility.operator_id, facility.county_code) if facility else ("", "")

    async def _writable_site(self, caller: Caller, site_id: str) -> FacilityInfo:
        require_authenticated(caller)
        facility = (await self._directory()).facility(site_id)
        if facility is None:
            raise FailedPrecondition(
                f"site {site_id} is no longer in the registry directory", reason="SITE_UNKNOWN",
                metadata={"site_id": site_id},
            )  # fmt: skip
        self._require_writer(caller, facility)
        return facility

    async def _asset(self, asset_id: str, caller: Caller, *, write: bool) -> AssetRow:
        require_authenticated(caller)
        async with self.database.session() as session:
            row = await store.asset(session, asset_id)
        if row is None:
            raise NotFound("asset", asset_id)
        if write:
            await self._writable_site(caller, row.site_id)
        else:
            self._require_reader(caller, row.operator_id, row.county_code)
        return row

    async def _meter(self, meter_id: str, caller: Caller, *, write: bool, field: str | None = None) -> MeterRow:
        """A meter the caller may use; unknown: NOT_FOUND for a resource path, a field violation for a body field."""
        require_authenticated(caller)
        async with self.database.session() as session:
            row = await store.meter(session, meter_id) if meter_id else None
        if row is None:
            if field is not None:
                raise _fail(field, f"unknown meter {meter_id!r}" if meter_id else "required")
            raise NotFound("meter", meter_id)
        if write:
            await self._writable_site(caller, row.site_id)
        else:
            await self._directory()
            self._require_reader(caller, *self._site_owner(row.site_id))
        return row

    async def _series(
        self, series_id: str, caller: Caller, *, write: bool, field: str | None = None
    ) -> IndependentSeriesRow:
        """An independent series the caller may use; unknown: as :meth:`_meter`."""
        require_authenticated(caller)
        async with self.database.session() as session:
            row = await store.independent_series(session, series_id) if series_id else None
        if row is None:
            if field is not None:
                raise _fail(field, f"unknown independent series {series_id!r}" if series_id else "required")
            raise NotFound("independent series", series_id)
        if write:
            await self._writable_site(caller, row.site_id)
        else:
            await self._directory()
            self._require_reader(caller, *self._site_owner(row.site_id))
        return row

    async def _visible_sites(self, caller: Caller) -> set[str] | None:
        """The sites whose meters and series the caller may list (``None``: every site)."""
        scope = scope_of(caller)
        if not (scope.operator_id or scope.division_prefix):
            return None
        directory = await self._directory()
        return {
            f.facility_id
            for f in directory.facilities()
            if (scope.operator_id and f.operator_id == scope.operator_id)
            or (scope.division_prefix and f.county_code.startswith(scope.division_prefix))
        }

    # ---- catalogue --------------------------------------------------------------------------------------------

    async def CreateCatalogueEntry(
        self, request: pb.CreateCatalogueEntryRequest, context: Context
    ) -> pb.CreateCatalogueEntryResponse:
        caller = caller_of(context)
        require_any_role(caller, CATALOGUE_ROLES, "adding a catalogue entry")
        entry, points = catalogue_entry_from_proto(request.entry)
        now = dt.datetime.now(dt.UTC)
        row = CatalogueEntryRow(
            catalogue_entry_id=new_id(),
            equipment_class=entry.equipment_class.value,
            manufacturer=entry.manufacturer,
            model=entry.model,
            rated_value=entry.rated_capacity.value,
            rated_unit=entry.rated_capacity.unit.value,
            input_current=entry.input.current.value if entry.input else "",
            input_voltage_class=entry.input.voltage_class.value if entry.input else "",
            output_current=entry.output.current.value if entry.output else "",
            output_voltage_class=entry.output.voltage_class.value if entry.output else "",
            curve_json=json.dumps(points),
            no_load_loss_w=entry.transformer_losses.no_load_loss_w if entry.transformer_losses else None,
            load_loss_w=entry.transformer_losses.load_loss_w if entry.transformer_losses else None,
            grade=entry.grade.grade if entry.grade else None,
            grade_standard=entry.grade.standard if entry.grade else "",
            grade_edition=entry.grade.edition if entry.grade else "",
            listed=entry.listed_in_recommended_catalogue,
            listing_editions=",".join(entry.listing_editions),
            created_by=caller.participant_id or "",
            created_at=now,
        )
        try:
            async with self.database.transaction() as session:
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExists(
                "catalogue entry", f"{entry.manufacturer} {entry.model}", "this class, manufacturer and model exist"
            ) from error
        return pb.CreateCatalogueEntryResponse(entry=catalogue_message(row))

    async def GetCatalogueEntry(
        self, request: pb.GetCatalogueEntryRequest, context: Context
    ) -> pb.GetCatalogueEntryResponse:
        require_authenticated(caller_of(context))
        async with self.database.session() as session:
            row = await store.catalogue_entry(session, request.catalogue_entry_id)
        if row is None:
            raise NotFound("catalogue entry", request.catalogue_entry_id)
        return pb.GetCatalogueEntryResponse(entry=catalogue_message(row))

    async def ListCatalogueEntries(
        self, request: pb.ListCatalogueEntriesRequest, context: Context
    ) -> pb.ListCatalogueEntriesResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        found: list[FieldViolation] = []
        klass = EQUIPMENT_CLASSES.optional(request.equipment_class, "equipment_class", found)
        if found:
            raise InvalidArgument(found)
        fingerprint = _fingerprint(request, caller)
        after = decode_token(request.page_token, fingerprint) or ""
        async with self.database.session() as session:
            rows = await store.list_catalogue(
                session,
                equipment_class=klass.value if klass else "",
                manufacturer=request.manufacturer.strip(),
                listed_only=request.listed_only,
                after=after,
                limit=limit + 1,
            )
        token = encode_token(rows[limit - 1].catalogue_entry_id, fingerprint) if len(rows) > limit else ""
        return pb.ListCatalogueEntriesResponse(
            entries=[catalogue_message(r) for r in rows[:limit]], next_page_token=token
        )

    # ---- assets -----------------------------------------------------------------------------------------------

    async def RegisterAsset(self, request: pb.RegisterAssetRequest, context: Context) -> pb.RegisterAssetResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        asset = request.asset
        facility = await self._site(asset.site_id, "asset.site_id")
        self._require_writer(caller, facility)
        found: list[FieldViolation] = []
        entry: CatalogueEntryRow | None = None
        group: RedundancyGroupRow | None = None
        async with self.database.session() as session:
            if asset.catalogue_entry_id:
                entry = await store.catalogue_entry(session, asset.catalogue_entry_id)
                if entry is None:
                    found.append(FieldViolation("asset.catalogue_entry_id", "unknown catalogue entry"))
            if asset.redundancy_group_id:
                group = await store.redundancy_group(session, asset.redundancy_group_id)
                if group is None or group.site_id != asset.site_id:
                    found.append(FieldViolation("asset.redundancy_group_id", "no such redundancy group at the site"))
        klass = EQUIPMENT_CLASSES.optional(asset.equipment_class, "asset.equipment_class", found)
        if entry is not None:
            entry_class = EQUIPMENT_CLASSES.from_proto(EQUIPMENT_CLASSES.name_to_proto(entry.equipment_class))
            if klass is not None and klass is not entry_class:
                found.append(FieldViolation("asset.equipment_class", f"the catalogue entry is {entry.equipment_class}"))
            klass = entry_class
        elif klass is None and not asset.equipment_class:
            found.append(FieldViolation("asset.equipment_class", "required without a catalogue entry"))
        rated = quantity_from_proto(asset, "rated_capacity", "asset.rated_capacity", found, required=entry is None) or (
            Quantity(entry.rated_value, Unit(entry.rated_unit)) if entry else None
        )
        if rated is not None and klass is not None:
            found += quantity_violations(rated, "asset.rated_capacity", dimensions=RATED_DIMENSIONS[klass])
            if rated.value <= 0:
                found.append(FieldViolation("asset.rated_capacity.value", "must be positive"))
        serial = _text(asset.serial_number, "asset.serial_number", found, limit=100, required=True)
        tag = _text(asset.asset_tag, "asset.asset_tag", found, limit=100)
        state = LIFECYCLE_STATES.required(asset.lifecycle_state, "asset.lifecycle_state", found)
        day = date_from_proto(asset, "lifecycle_date", "asset.lifecycle_date", found)
        procurement = procurement_from_proto(asset, "procurement", "asset.procurement", found)
        if found:
            raise InvalidArgument(found)
        assert klass is not None and rated is not None and state is not None and day is not None
        require_transition(None, None, state, day, today=today())
        now = dt.datetime.now(dt.UTC)
        row = AssetRow(
            asset_id=new_id(),
            site_id=facility.facility_id,
            operator_id=facility.operator_id,
            county_code=facility.county_code,
            catalogue_entry_id=entry.catalogue_entry_id if entry else None,
            equipment_class=klass.value,
            rated_value=rated.value,
            rated_unit=rated.unit.value,
            serial_number=serial,
            asset_tag=tag,
            lifecycle_state=state.value,
            lifecycle_date=day,
            redundancy_group_id=group.redundancy_group_id if group else None,
            created_at=now,
            updated_at=now,
        )
        if procurement is not None:
            _apply_procurement(row, procurement)
        transition = AssetTransitionRow(
            asset_id=row.asset_id,
            number=1,
            from_state="",
            to_state=state.value,
            effective_date=day,
            note="registered",
            recorded_by=caller.participant_id or "",
            recorded_at=now,
        )
        try:
            async with self.database.transaction() as session:
                session.add(row)
                session.add(transition)
                await session.flush()
                message = asset_message(row, [transition])
                events.asset_lifecycle_changed(session, self.runtime.settings, message, transition_message(transition))
        except IntegrityError as error:
            raise AlreadyExists(
                "asset", serial, "an asset with this serial number is registered at the site"
            ) from error
        self.runtime.relay.notify()
        return pb.RegisterAssetResponse(asset=message)

    async def GetAsset(self, request: pb.GetAssetRequest, context: Context) -> pb.GetAssetResponse:
        row = await self._asset(request.asset_id, caller_of(context), write=False)
        async with self.database.session() as session:
            history = await store.transitions(session, row.asset_id)
            feeds, fed_by = await store.links_of(session, row.asset_id)
        message = asset_message(row, history)
        message.feeds.extend(link_message(link) for link in feeds)
        message.fed_by.extend(link_message(link) for link in fed_by)
        return pb.GetAssetResponse(asset=message)

    async def ListAssets(self, request: pb.ListAssetsRequest, context: Context) -> pb.ListAssetsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        found: list[FieldViolation] = []
        klass = EQUIPMENT_CLASSES.optional(request.equipment_class, "equipment_class", found)
        state = LIFECYCLE_STATES.optional(request.lifecycle_state, "lifecycle_state", found)
        if found:
            raise InvalidArgument(found)
        fingerprint = _fingerprint(request, caller)
        after = decode_token(request.page_token, fingerprint) or ""
        async with self.database.session() as session:
            rows = await store.list_assets(
                session,
                scope_of(caller),
                site_id=request.site_id,
                equipment_class=klass.value if klass else "",
                lifecycle_state=state.value if state else "",
                after=after,
                limit=limit + 1,
            )
        token = encode_token(rows[limit - 1].asset_id, fingerprint) if len(rows) > limit else ""
        return pb.ListAssetsResponse(assets=[asset_message(r) for r in rows[:limit]], next_page_token=token)

    async def TransitionAsset(self, request: pb.TransitionAssetRequest, context: Context) -> pb.TransitionAssetResponse:
        caller = caller_of(context)
        row = await self._asset(request.asset_id, caller, write=True)
        found: list[FieldViolation] = []
        target = LIFECYCLE_STATES.required(request.to_state, "to_state", found)
        day = date_from_proto(request, "effective_date", "effective_date", found)
        note = _text(request.note, "note", found, limit=500)
        if found:
            raise InvalidArgument(found)
        assert target is not None and day is not None
        now = dt.datetime.now(dt.UTC)
        try:
            async with self.database.transaction() as session:
                stored = await store.asset(session, row.asset_id)
                assert stored is not None
                history = await store.transitions(session, row.asset_id)
                current = LifecycleState(stored.lifecycle_state)
                require_transition(current, stored.lifecycle_date, target, day, today=today())
                transition = AssetTransitionRow(
                    asset_id=stored.asset_id,
                    number=len(history) + 1,
                    from_state=current.value,
                    to_state=target.value,
                    effective_date=day,
                    note=note,
                    recorded_by=caller.participant_id or "",
                    recorded_at=now,
                )
                stored.lifecycle_state = target.value
                stored.lifecycle_date = day
                stored.updated_at = now
                session.add(transition)
                session.add(stored)
                await session.flush()
                message = asset_message(stored, [*history, transition])
                events.asset_lifecycle_changed(session, self.runtime.settings, message, transition_message(transition))
        except IntegrityError as error:
            raise Aborted("another transition of the asset was recorded at the same time; retry") from error
        self.runtime.relay.notify()
        return pb.TransitionAssetResponse(asset=message)

    async def RecordProcurement(
        self, request: pb.RecordProcurementRequest, context: Context
    ) -> pb.RecordProcurementResponse:
        caller = caller_of(context)
        row = await self._asset(request.asset_id, caller, write=True)
        found: list[FieldViolation] = []
        procurement = procurement_from_proto(request, "procurement", "procurement", found, required=True)
        if found:
            raise InvalidArgument(found)
        assert procurement is not None
        async with self.database.transaction() as session:
            stored = await store.asset(session, row.asset_id)
            assert stored is not None
            _apply_procurement(stored, procurement)
            stored.updated_at = dt.datetime.now(dt.UTC)
            session.add(stored)
            message = asset_message(stored)
        return pb.RecordProcurementResponse(asset=message)

    async def CreateRedundancyGroup(
        self, request: pb.CreateRedundancyGroupRequest, context: Context
    ) -> pb.CreateRedundancyGroupResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        group = request.group
        facility = await self._site(group.site_id, "group.site_id")
        self._require_writer(caller, facility)
        found: list[FieldViolation] = []
        name = _text(group.name, "group.name", found, limit=200, required=True)
        scheme = REDUNDANCY_SCHEMES.required(group.scheme, "group.scheme", found)
        if found:
            raise InvalidArgument(found)
        assert scheme is not None
        units = group.units or None
        redundant = group.redundant_units or None
        try:
            limit = design_max(scheme, units=units, redundant_units=redundant)
        except InvalidArgument as error:
            raise _prefixed(error, "group.") from None
        row = RedundancyGroupRow(
            redundancy_group_id=new_id(),
            site_id=facility.facility_id,
            name=name,
            scheme=scheme.value,
            units=units,
            redundant_units=redundant,
            created_at=dt.datetime.now(dt.UTC),
        )
        async with self.database.transaction() as session:
            session.add(row)
        return pb.CreateRedundancyGroupResponse(group=group_message(row, limit))

    async def AssignRedundancyGroup(
        self, request: pb.AssignRedundancyGroupRequest, context: Context
    ) -> pb.AssignRedundancyGroupResponse:
        caller = caller_of(context)
        row = await self._asset(request.asset_id, caller, write=True)
        async with self.database.transaction() as session:
            if request.redundancy_group_id:
                group = await store.redundancy_group(session, request.redundancy_group_id)
                if group is None or group.site_id != row.site_id:
                    raise _fail("redundancy_group_id", "no such redundancy group at the asset's site")
            stored = await store.asset(session, row.asset_id)
            assert stored is not None
            stored.redundancy_group_id = request.redundancy_group_id or None
            stored.updated_at = dt.datetime.now(dt.UTC)
            session.add(stored)
            message = asset_message(stored)
        return pb.AssignRedundancyGroupResponse(asset=message)

    async def LinkAssets(self, request: pb.LinkAssetsRequest, context: Context) -> pb.LinkAssetsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        link = request.link
        found: list[FieldViolation] = []
        medium = VOLTAGE_CLASSES.optional(link.medium, "link.medium", found)
        if link.path not in ("", "A", "B"):
            found.append(FieldViolation("link.path", "A, B or empty"))
        if link.from_asset_id and link.from_asset_id == link.to_asset_id:
            found.append(FieldViolation("link.to_asset_id", "an asset cannot feed itself"))
        async with self.database.session() as session:
            ends = await store.assets(session, {link.from_asset_id, link.to_asset_id} - {""})
        for name, asset_id in (("from_asset_id", link.from_asset_id), ("to_asset_id", link.to_asset_id)):
            if asset_id not in ends:
                found.append(FieldViolation(f"link.{name}", "unknown asset" if asset_id else "required"))
        if not found and ends[link.from_asset_id].site_id != ends[link.to_asset_id].site_id:
            found.append(FieldViolation("link.to_asset_id", "the two assets are at different sites"))
        if found:
            raise InvalidArgument(found)
        site_id = ends[link.from_asset_id].site_id
        await self._writable_site(caller, site_id)
        row = PowerLinkRow(
            power_link_id=new_id(),
            site_id=site_id,
            from_asset_id=link.from_asset_id,
            to_asset_id=link.to_asset_id,
            medium=medium.value if medium else "",
            path=link.path,
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            async with self.database.transaction() as session:
                edges = await store.site_links(session, site_id)
                if _reaches(edges, link.to_asset_id, link.from_asset_id):
                    raise _fail("link", "would close a loop in the power chain (the target already feeds the source)")
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExists("power link", f"{link.from_asset_id}→{link.to_asset_id}") from error
        return pb.LinkAssetsResponse(link=link_message(row))

    # ---- meters, readings, states -----------------------------------------------------------------------------

    async def CreateMeter(self, request: pb.CreateMeterRequest, context: Context) -> pb.CreateMeterResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        meter = request.meter
        facility = await self._site(meter.site_id, "meter.site_id")
        self._require_writer(caller, facility)
        found: list[FieldViolation] = []
        if meter.asset_id:
            async with self.database.session() as session:
                asset = await store.asset(session, meter.asset_id)
            if asset is None or asset.site_id != meter.site_id:
                found.append(FieldViolation("meter.asset_id", "no such asset at the site"))
        name = _text(meter.name, "meter.name", found, limit=200)
        quantity = METER_QUANTITIES.required(meter.quantity, "meter.quantity", found)
        unit = UNITS.required(meter.unit, "meter.unit", found)
        mode = READING_MODES.required(meter.mode, "meter.mode", found)
        role = METER_ROLES.required(meter.role, "meter.role", found)
        interval = duration_from_proto(meter, "interval", "meter.interval", found)
        current = CURRENT_KINDS.optional(meter.current, "meter.current", found)
        direction = DIRECTIONS.optional(meter.direction, "meter.direction", found)
        point = IT_POINTS.optional(meter.it_measurement_point, "meter.it_measurement_point", found)
        rated = quantity_from_proto(meter, "rated_max", "meter.rated_max", found, required=False)
        if not math.isfinite(meter.register_max):
            found.append(FieldViolation("meter.register_max", "must be a finite number"))
        if found:
            raise InvalidArgument(found)
        assert quantity is not None and unit is not None and mode is not None and role is not None
        spec = MeterSpec(
            meter_id="",
            quantity=quantity,
            unit=unit,
            mode=mode,
            interval=interval,
            role=role,
            current=current or CurrentKind.AC,
            direction=direction or Direction.IMPORT,
            rated_max=rated,
            register_max=meter.register_max or None,
        )
        found = meter_violations(spec, "meter")
        energy = quantity.dimension is Dimension.ENERGY
        if role is MeterRole.IT_LOAD and energy and point is None:
            found.append(FieldViolation("meter.it_measurement_point", "required for an IT_LOAD energy meter"))
        if point is not None and role is not MeterRole.IT_LOAD:
            found.append(FieldViolation("meter.it_measurement_point", "only for IT_LOAD meters"))
        if found:
            raise InvalidArgument(found)
        row = MeterRow(
            meter_id=new_id(),
            site_id=facility.facility_id,
            asset_id=meter.asset_id or None,
            name=name,
            quantity=quantity.value,
            unit=unit.value,
            mode=mode.value,
            interval_s=int(interval.total_seconds()) if interval else None,
            current=spec.current.value,
            direction=spec.direction.value,
            role=role.value,
            it_measurement_point=point.value if point else "",
            rated_max_value=rated.value if rated else None,
            rated_max_unit=rated.unit.value if rated else "",
            register_max=spec.register_max,
            created_at=dt.datetime.now(dt.UTC),
        )
        async with self.database.transaction() as session:
            session.add(row)
        return pb.CreateMeterResponse(meter=meter_message(row))

    async def GetMeter(self, request: pb.GetMeterRequest, context: Context) -> pb.GetMeterResponse:
        row = await self._meter(request.meter_id, caller_of(context), write=False)
        return pb.GetMeterResponse(meter=meter_message(row))

    async def ListMeters(self, request: pb.ListMetersRequest, context: Context) -> pb.ListMetersResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        fingerprint = _fingerprint(request, caller)
        after = decode_token(request.page_token, fingerprint) or ""
        sites = await self._visible_sites(caller)
        async with self.database.session() as session:
            rows = await store.list_meters(
                session,
                site_ids=sites,
                site_id=request.site_id,
                asset_id=request.asset_id,
                after=after,
                limit=limit + 1,
            )
        token = encode_token(rows[limit - 1].meter_id, fingerprint) if len(rows) > limit else ""
        return pb.ListMetersResponse(meters=[meter_message(r) for r in rows[:limit]], next_page_token=token)

    async def UpsertReadings(self, request: pb.UpsertReadingsRequest, context: Context) -> pb.UpsertReadingsResponse:
        caller = caller_of(context)
        meter = await self._meter(request.meter_id, caller, write=True, field="meter_id")
        readings = ingest.readings_from_proto(request.readings)
        async with self.database.transaction() as session:
            outcome = await ingest.upsert_batch(session, meter, readings)
        return pb.UpsertReadingsResponse(
            inserted=outcome.inserted, updated=outcome.updated, unchanged=outcome.unchanged, flagged=outcome.flagged
        )

    async def UploadReadings(
        self, request_iterator: AsyncIterator[pb.UploadReadingsRequest], context: Context
    ) -> pb.UploadReadingsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        summary = pb.UploadReadingsResponse()
        totals = ingest.BatchOutcome()
        targets: dict[tuple[str, str], MeterRow | IndependentSeriesRow | DomainError] = {}
        index = -1
        async for item in request_iterator:
            index += 1
            summary.messages += 1
            summary.received += len(item.readings)
            try:
                if bool(item.meter_id) == bool(item.series_id):
                    raise _fail("meter_id", "exactly one of meter_id and series_id")
                key = ("meter", item.meter_id) if item.meter_id else ("series", item.series_id)
                known = targets.get(key)
                if known is None:
                    try:
                        if item.meter_id:
                            known = await self._meter(item.meter_id, caller, write=True, field="meter_id")
                        else:
                            known = await self._series(item.series_id, caller, write=True, field="series_id")
                    except (InvalidArgument, PermissionDenied, FailedPrecondition) as refused:
                        known = refused
                    targets[key] = known
                if isinstance(known, DomainError):
                    raise known
                readings = ingest.readings_from_proto(item.readings)
                async with self.database.transaction() as session:
                    if isinstance(known, MeterRow):
                        outcome = await ingest.upsert_batch(session, known, readings)
                    else:
                        outcome = await ingest.upsert_series_batch(session, known, readings, field="readings")
                totals.add(outcome)
            except (InvalidArgument, PermissionDenied, FailedPrecondition) as error:
                summary.rejected += len(item.readings)
                if len(summary.problems) < MAX_UPLOAD_PROBLEMS:
                    summary.problems.append(batch_problem(index, item.meter_id, error, item.series_id))
        summary.inserted, summary.updated = totals.inserted, totals.updated
        summary.unchanged, summary.flagged = totals.unchanged, totals.flagged
        return summary

    async def ListReadings(self, request: pb.ListReadingsRequest, context: Context) -> pb.ListReadingsResponse:
        caller = caller_of(context)
        meter = await self._meter(request.meter_id, caller, write=False)
        rows, token = await self._interval_page(
            request, caller, functools.partial(store.list_readings, meter_id=meter.meter_id)
        )
        return pb.ListReadingsResponse(readings=[reading_message(*r) for r in rows], next_page_token=token)

    async def _interval_page(
        self, request: pb.ListReadingsRequest | pb.ListSeriesValuesRequest, caller: Caller, fetch: IntervalFetch
    ) -> tuple[Sequence[Any], str]:
        """One page of interval values (readings or series values) in [start_time, end_time), keyed by start."""
        limit = page_size(request.page_size)
        start = request.start_time.seconds if request.HasField("start_time") else 0
        end = request.end_time.seconds if request.HasField("end_time") else 2**62
        fingerprint = _fingerprint(request, caller)
        after = decode_integer_token(request.page_token, fingerprint)
        async with self.database.session() as session:
            rows = await fetch(
                session, start_s=max(start, after + 1) if after is not None else start, end_s=end, limit=limit + 1
            )
        token = encode_token(str(rows[limit - 1][0]), fingerprint) if len(rows) > limit else ""
        return rows[:limit], token

    # ---- independent series -----------------------------------------------------------------------------------

    async def CreateIndependentSeries(
        self, request: pb.CreateIndependentSeriesRequest, context: Context
    ) -> pb.CreateIndependentSeriesResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        message = request.series
        facility = await self._site(message.site_id, "series.site_id")
        self._require_writer(caller, facility)
        found: list[FieldViolation] = []
        name = message.name.strip()
        unit = UNITS.optional(message.unit, "series.unit", found)
        label = message.unit_label.strip()
        aggregation = SERIES_AGGREGATIONS.optional(message.aggregation, "series.aggregation", found)
        interval = duration_from_proto(message, "interval", "series.interval", found)
        source = _text(message.source, "series.source", found, limit=200)
        named = {v.field for v in found}
        found += [v for v in series_violations(name, unit, label, aggregation, interval) if v.field not in named]
        if found:
            raise InvalidArgument(found)
        if aggregation is None:
            assert unit is not None
            aggregation = natural_aggregation(unit)
        row = IndependentSeriesRow(
            series_id=new_id(),
            site_id=facility.facility_id,
            name=name,
            unit=unit.value if unit else "",
            unit_label="" if unit else label,
            aggregation=aggregation.value,
            interval_s=int(interval.total_seconds()) if interval else None,
            source=source,
            created_by=caller.participant_id or "",
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            async with self.database.transaction() as session:
                session.add(row)
        except IntegrityError as error:
            raise AlreadyExists("independent series", name, "a series of this name exists at the site") from error
        return pb.CreateIndependentSeriesResponse(series=series_message(row))

    async def GetIndependentSeries(
        self, request: pb.GetIndependentSeriesRequest, context: Context
    ) -> pb.GetIndependentSeriesResponse:
        row = await self._series(request.series_id, caller_of(context), write=False)
        return pb.GetIndependentSeriesResponse(series=series_message(row))

    async def ListIndependentSeries(
        self, request: pb.ListIndependentSeriesRequest, context: Context
    ) -> pb.ListIndependentSeriesResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        fingerprint = _fingerprint(request, caller)
        after = decode_token(request.page_token, fingerprint) or ""
        sites = await self._visible_sites(caller)
        async with self.database.session() as session:
            rows = await store.list_independent_series(
                session, site_ids=sites, site_id=request.site_id, after=after, limit=limit + 1
            )
        token = encode_token(rows[limit - 1].series_id, fingerprint) if len(rows) > limit else ""
        return pb.ListIndependentSeriesResponse(series=[series_message(r) for r in rows[:limit]], next_page_token=token)

    async def UpsertSeriesValues(
        self, request: pb.UpsertSeriesValuesRequest, context: Context
    ) -> pb.UpsertSeriesValuesResponse:
        caller = caller_of(context)
        series = await self._series(request.series_id, caller, write=True, field="series_id")
        values = ingest.readings_from_proto(request.values, "values")
        async with self.database.transaction() as session:
            outcome = await ingest.upsert_series_batch(session, series, values)
        return pb.UpsertSeriesValuesResponse(
            inserted=outcome.inserted, updated=outcome.updated, unchanged=outcome.unchanged, flagged=outcome.flagged
        )

    async def ListSeriesValues(
        self, request: pb.ListSeriesValuesRequest, context: Context
    ) -> pb.ListSeriesValuesResponse:
        caller = caller_of(context)
        series = await self._series(request.series_id, caller, write=False)
        fetch = functools.partial(store.list_series_values, series_id=series.series_id)
        rows, token = await self._interval_page(request, caller, fetch)
        return pb.ListSeriesValuesResponse(values=[reading_message(*r) for r in rows], next_page_token=token)

    async def RecordOperatingStates(
        self, request: pb.RecordOperatingStatesRequest, context: Context
    ) -> pb.RecordOperatingStatesResponse:
        caller = caller_of(context)
        row = await self._asset(request.asset_id, caller, write=True)
        intervals = ingest.states_from_proto(request.intervals)
        async with self.database.transaction() as session:
            recorded, unchanged = await ingest.record_states(session, row.asset_id, intervals)
        return pb.RecordOperatingStatesResponse(recorded=recorded, unchanged=unchanged)

    async def ListOperatingStates(
        self, request: pb.ListOperatingStatesRequest, context: Context
    ) -> pb.ListOperatingStatesResponse:
        row = await self._asset(request.asset_id, caller_of(context), write=False)
        start = request.start_time.seconds if request.HasField("start_time") else 0
        end = request.end_time.seconds if request.HasField("end_time") else 2**62
        async with self.database.session() as session:
            rows = await store.states_overlapping(session, row.asset_id, start, end)
        return pb.ListOperatingStatesResponse(
            intervals=[
                pb.OperatingStateInterval(
                    state=OPERATING_STATES.name_to_proto(state),
                    start_time=seconds_to_proto(s),
                    end_time=seconds_to_proto(e),
                    awake_modules=awake or 0,
                )
                for s, e, state, awake in rows
            ]
        )

    # ---- figures ----------------------------------------------------------------------------------------------

    async def GetPue(self, request: pb.GetPueRequest, context: Context) -> pb.GetPueResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        facility = await self._site(request.site_id, "site_id")
        self._require_reader(caller, facility.operator_id, facility.county_code)
        period = _required_period(request, "period")
        async with self.database.session() as session:
            return await figures.site_pue(session, facility.facility_id, period)

    async def GetLoadRateStatistics(
        self, request: pb.GetLoadRateStatisticsRequest, context: Context
    ) -> pb.GetLoadRateStatisticsResponse:
        row = await self._asset(request.asset_id, caller_of(context), write=False)
        period = _required_period(request, "period")
        async with self.database.session() as session:
            group = await store.redundancy_group(session, row.redundancy_group_id) if row.redundancy_group_id else None
            scheme = (group.scheme, group.units, group.redundant_units) if group else None
            return await figures.load_rate(session, row, period, scheme)

    async def EvaluateEfficiencyDrift(
        self, request: pb.EvaluateEfficiencyDriftRequest, context: Context
    ) -> pb.EvaluateEfficiencyDriftResponse:
        row = await self._asset(request.asset_id, caller_of(context), write=False)
        found: list[FieldViolation] = []
        period = period_from_proto(request, "period", "period", found)
        window = duration_from_proto(request, "window", "window", found) or dt.timedelta(days=1)
        threshold = request.threshold_pp if request.HasField("threshold_pp") else DEFAULT_DRIFT_THRESHOLD_PP
        if not (math.isfinite(threshold) and threshold >= 0):
            found.append(FieldViolation("threshold_pp", "a non-negative number of percentage points"))
        consecutive = request.consecutive_windows or DEFAULT_DRIFT_WINDOWS
        if not 1 <= consecutive <= 365:
            found.append(FieldViolation("consecutive_windows", "1 to 365"))
        power_factor = request.power_factor if request.HasField("power_factor") else 1.0
        if not 0 < power_factor <= 1:
            found.append(FieldViolation("power_factor", "must lie in (0, 1]"))
        if period is not None and period.duration / window > 10_000:
            found.append(FieldViolation("window", "at most 10,000 windows per period"))
        for name in ("input_meter_ids", "output_meter_ids"):
            if len(getattr(request, name)) > 100:
                found.append(FieldViolation(name, "at most 100 meters"))
        if found:
            raise InvalidArgument(found)
        assert period is not None
        async with self.database.transaction() as session:
            entry = await store.catalogue_entry(session, row.catalogue_entry_id) if row.catalogue_entry_id else None
            run = await figures.efficiency_drift_of(
                session,
                row,
                entry,
                period,
                window=window,
                threshold_pp=threshold,
                consecutive=consecutive,
                power_factor=power_factor,
                input_ids=list(request.input_meter_ids),
                output_ids=list(request.output_meter_ids),
            )
            response = run.response
            if response.alert and not await store.drift_finding_exists(session, row.asset_id, run.window_end_s):
                finding = DriftFindingRow(
                    finding_id=new_id(),
                    asset_id=row.asset_id,
                    window_end_s=run.window_end_s,
                    drift_pp=run.worst_drift_pp,
                    threshold_pp=threshold,
                    windows=len(run.drifted_tail),
                    created_at=dt.datetime.now(dt.UTC),
                )
                session.add(finding)
                events.efficiency_drift_detected(
                    session,
                    self.runtime.settings,
                    finding_id=finding.finding_id,
                    asset_id=row.asset_id,
                    site_id=row.site_id,
                    windows=run.drifted_tail,
                    threshold_pp=threshold,
                    input_meter_ids=list(response.input_meter_ids),
                    output_meter_ids=list(response.output_meter_ids),
                )
                response.finding_id = finding.finding_id
        if response.finding_id:
            self.runtime.relay.notify()
        return response

    async def CompareVoltageUpgrade(
        self, request: pb.CompareVoltageUpgradeRequest, context: Context
    ) -> pb.CompareVoltageUpgradeResponse:
        meter = await self._meter(request.meter_id, caller_of(context), write=False)
        period = _required_period(request, "period")
        async with self.database.session() as session:
            return await figures.voltage_upgrade(session, meter, request, period)

    async def GetEfficientShare(
        self, request: pb.GetEfficientShareRequest, context: Context
    ) -> pb.GetEfficientShareResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        for i, number in enumerate(request.group_by):
            if number not in pb.ShareDimension.values() or number == pb.SHARE_DIMENSION_UNSPECIFIED:
                raise _fail(f"group_by[{i}]", "OPERATOR, PROVINCE or EQUIPMENT_CLASS")
        scope = _narrowed(scope_of(caller), _division_prefix(request.division_prefix))
        async with self.database.session() as session:
            return await figures.share(session, scope, list(request.group_by))

    # ---- measures, plans, evaluations -------------------------------------------------------------------------

    async def CreateMeasure(self, request: pb.CreateMeasureRequest, context: Context) -> pb.CreateMeasureResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        measure = request.measure
        facility = await self._site(measure.site_id, "measure.site_id")
        self._require_writer(caller, facility)
        found: list[FieldViolation] = []
        kind = MEASURE_TYPES.required(measure.measure_type, "measure.measure_type", found)
        description = _text(measure.description, "measure.description", found, limit=2_000)
        installation = period_from_proto(measure, "installation", "measure.installation", found)
        claimed = measure.claimed_savings_kwh_per_year if measure.HasField("claimed_savings_kwh_per_year") else None
        if claimed is not None and not (math.isfinite(claimed) and claimed >= 0):
            found.append(FieldViolation("measure.claimed_savings_kwh_per_year", "a non-negative number"))
        async with self.database.session() as session:
            known = await store.assets(session, set(measure.asset_ids))
        for i, asset_id in enumerate(measure.asset_ids):
            if asset_id not in known or known[asset_id].site_id != measure.site_id:
                found.append(FieldViolation(f"measure.asset_ids[{i}]", "no such asset at the site"))
        if found:
            raise InvalidArgument(found)
        assert kind is not None and installation is not None
        row = MeasureRow(
            measure_id=new_id(),
            site_id=facility.facility_id,
            operator_id=facility.operator_id,
            county_code=facility.county_code,
            measure_type=kind.value,
            description=description,
            asset_ids=",".join(dict.fromkeys(measure.asset_ids)),
            installation_start=installation.start,
            installation_end=installation.end,
            claimed_savings_kwh_per_year=claimed,
            created_by=caller.participant_id or "",
            created_at=dt.datetime.now(dt.UTC),
        )
        async with self.database.transaction() as session:
            session.add(row)
        return pb.CreateMeasureResponse(measure=measure_message(row))

    async def GetMeasure(self, request: pb.GetMeasureRequest, context: Context) -> pb.GetMeasureResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        async with self.database.session() as session:
            row = await store.measure(session, request.measure_id) if request.measure_id else None
            plan_ids = await store.plan_ids_of_measure(session, row.measure_id) if row else []
        if row is None:
            raise NotFound("measure", request.measure_id)
        self._require_reader(caller, row.operator_id, row.county_code)
        return pb.GetMeasureResponse(measure=measure_message(row), plan_ids=plan_ids)

    async def ListMeasures(self, request: pb.ListMeasuresRequest, context: Context) -> pb.ListMeasuresResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        limit = page_size(request.page_size)
        found: list[FieldViolation] = []
        kind = MEASURE_TYPES.optional(request.measure_type, "measure_type", found)
        if found:
            raise InvalidArgument(found)
        fingerprint = _fingerprint(request, caller)
        after = decode_token(request.page_token, fingerprint) or ""
        async with self.database.session() as session:
            rows = await store.list_measures(
                session,
                scope_of(caller),
                site_id=request.site_id.strip(),
                operator_id=request.operator_id.strip(),
                measure_type=kind.value if kind else "",
                after=after,
                limit=limit + 1,
            )
        token = encode_token(rows[limit - 1].measure_id, fingerprint) if len(rows) > limit else ""
        return pb.ListMeasuresResponse(measures=[measure_message(r) for r in rows[:limit]], next_page_token=token)

    async def CreateMvPlan(self, request: pb.CreateMvPlanRequest, context: Context) -> pb.CreateMvPlanResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        plan = request.plan
        async with self.database.session() as session:
            measure = await store.measure(session, plan.measure_id) if plan.measure_id else None
        if measure is None:
            raise _fail("plan.measure_id", "unknown measure" if plan.measure_id else "required")
        await self._writable_site(caller, measure.site_id)
        async with self.database.session() as session:
            checked = await plans.check_plan(session, plan, measure)
        row = plans.plan_row(new_id(), checked, dt.datetime.now(dt.UTC))
        async with self.database.transaction() as session:
            session.add(row)
        return pb.CreateMvPlanResponse(plan=plans.plan_message(row))

    async def GetMvPlan(self, request: pb.GetMvPlanRequest, context: Context) -> pb.GetMvPlanResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        async with self.database.session() as session:
            plan = await store.plan(session, request.plan_id) if request.plan_id else None
            measure = await store.measure(session, plan.measure_id) if plan else None
            versions = await store.evaluation_of_plan(session, plan.plan_id) if plan else []
        if plan is None or measure is None:
            raise NotFound("M&V plan", request.plan_id)
        self._require_reader(caller, measure.operator_id, measure.county_code)
        return pb.GetMvPlanResponse(
            plan=plans.plan_message(plan), evaluation_id=versions[0].evaluation_id if versions else ""
        )

    async def _plan_for_write(self, plan_id: str, caller: Caller) -> tuple[MvPlanRow, MeasureRow]:
        require_authenticated(caller)
        async with self.database.session() as session:
            plan = await store.plan(session, plan_id)
            measure = await store.measure(session, plan.measure_id) if plan else None
        if plan is None or measure is None:
            raise NotFound("M&V plan", plan_id)
        await self._writable_site(caller, measure.site_id)
        return plan, measure

    async def _compute(
        self, session: Any, plan: MvPlanRow, measure: MeasureRow, adjustments: Sequence[NonRoutineAdjustment]
    ) -> Any:
        try:
            return await evaluations.compute(session, plans.stored_plan(plan, measure), adjustments)
        except InvalidArgument as error:
            # The stored readings, not the request, cannot support the evaluation (too few points, collinear).
            raise FailedPrecondition(
                "the stored readings cannot support the evaluation: "
                + "; ".join(f"{v.field}: {v.description}" for v in error.violations),
                reason="EVALUATION_NOT_COMPUTABLE",
                metadata={"plan_id": plan.plan_id},
            ) from error

    async def EvaluateSavings(self, request: pb.EvaluateSavingsRequest, context: Context) -> pb.EvaluateSavingsResponse:
        caller = caller_of(context)
        plan, measure = await self._plan_for_write(request.plan_id, caller)
        adjustments = adjustments_from_proto(request.adjustments)
        now = dt.datetime.now(dt.UTC)
        try:
            async with self.database.transaction() as session:
                versions = await store.evaluation_of_plan(session, plan.plan_id)
                latest = versions[-1] if versions else None
                if latest is not None and latest.status == EvaluationStatus.VERIFIED.value:
                    revise_draft(evaluations.evaluation_of(latest), evaluations.evaluation_of(latest).result)
                result = await self._compute(session, plan, measure, adjustments)
                if latest is None:
                    evaluation = new_evaluation(new_id(), measure.measure_id, result)
                    row = EvaluationRow(
                        evaluation_id=evaluation.evaluation_id,
                        version=1,
                        plan_id=plan.plan_id,
                        measure_id=measure.measure_id,
                        measure_type=measure.measure_type,
                        site_id=measure.site_id,
                        operator_id=measure.operator_id,
                        county_code=measure.county_code,
                        status="",
                        savings_kwh=0.0,
                        created_at=now,
                        updated_at=now,
                        payload=b"",
                    )
                else:
                    evaluation = revise_draft(evaluations.evaluation_of(latest), result)
                    row = latest
                message = evaluations.write_row(row, evaluation, now)
                session.add(row)
        except IntegrityError as error:
            raise Aborted("the plan was evaluated at the same time by another request; retry") from error
        return pb.EvaluateSavingsResponse(evaluation=message)

    async def VerifyEvaluation(
        self, request: pb.VerifyEvaluationRequest, context: Context
    ) -> pb.VerifyEvaluationResponse:
        caller = caller_of(context)
        require_any_role(caller, ("REGULATOR", "PLATFORM_OPERATOR"), "verifying an evaluation")
        now = dt.datetime.now(dt.UTC)
        async with self.database.transaction() as session:
            versions = await store.evaluation_versions(session, request.evaluation_id)
            if not versions:
                raise NotFound("evaluation", request.evaluation_id)
            latest = versions[-1]
            if not caller.supervises(latest.county_code):
                raise PermissionDenied("the evaluation's site is outside the caller's region")
            if request.version and request.version != latest.version:
                raise FailedPrecondition(
                    f"version {request.version} is not the latest ({latest.version})", reason="NOT_LATEST_VERSION",
                    metadata={"evaluation_id": latest.evaluation_id, "latest_version": str(latest.version)},
                )  # fmt: skip
            current = evaluations.evaluation_of(latest)
            if current.status is EvaluationStatus.DRAFT and not current.result.verdict.passed:
                failed = ",".join(c.value for c in current.result.verdict.failed())
                raise FailedPrecondition(
                    f"the evaluation fails its sufficiency criteria ({failed}); it cannot be verified",
                    reason="SUFFICIENCY_NOT_MET",
                    metadata={"evaluation_id": latest.evaluation_id, "failed": failed},
                )
            verified = verify_evaluation(current, caller.participant_id or "", now)
            message = evaluations.write_row(latest, verified, now)
            session.add(latest)
            events.evaluation_verified(session, self.runtime.settings, message)
        self.runtime.relay.notify()
        return pb.VerifyEvaluationResponse(evaluation=message)

    async def CorrectEvaluation(
        self, request: pb.CorrectEvaluationRequest, context: Context
    ) -> pb.CorrectEvaluationResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        async with self.database.session() as session:
            versions = await store.evaluation_versions(session, request.evaluation_id)
        if not versions:
            raise NotFound("evaluation", request.evaluation_id)
        plan, measure = await self._plan_for_write(versions[-1].plan_id, caller)
        found: list[FieldViolation] = []
        note = _text(request.note, "note", found, limit=2_000, required=True)
        if found:
            raise InvalidArgument(found)
        adjustments = adjustments_from_proto(request.adjustments)
        now = dt.datetime.now(dt.UTC)
        try:
            async with self.database.transaction() as session:
                versions = await store.evaluation_versions(session, request.evaluation_id)
                latest = versions[-1]
                current = evaluations.evaluation_of(latest)
                if current.status is EvaluationStatus.DRAFT:
                    correct_evaluation(current, current.result, note)  # refuses: EVALUATION_NOT_VERIFIED
                result = await self._compute(session, plan, measure, adjustments)
                corrected = correct_evaluation(current, result, note)
                row = EvaluationRow(
                    evaluation_id=latest.evaluation_id,
                    version=corrected.version,
                    plan_id=latest.plan_id,
                    measure_id=latest.measure_id,
                    measure_type=latest.measure_type,
                    site_id=latest.site_id,
                    operator_id=latest.operator_id,
                    county_code=latest.county_code,
                    status="",
                    savings_kwh=0.0,
                    created_at=now,
                    updated_at=now,
                    payload=b"",
                )
                message = evaluations.write_row(row, corrected, now)
                session.add(row)
        except IntegrityError as error:
            raise Aborted("the evaluation was corrected at the same time by another request; retry") from error
        return pb.CorrectEvaluationResponse(evaluation=message)

    async def GetEvaluation(self, request: pb.GetEvaluationRequest, context: Context) -> pb.GetEvaluationResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        async with self.database.session() as session:
            versions = await store.evaluation_versions(session, request.evaluation_id)
        if not versions:
            raise NotFound("evaluation", request.evaluation_id)
        self._require_reader(caller, versions[-1].operator_id, versions[-1].county_code)
        chosen = (
            versions[-1] if not request.version else next((v for v in versions if v.version == request.version), None)
        )
        if chosen is None:
            raise NotFound("evaluation version", f"{request.evaluation_id} v{request.version}")
        return pb.GetEvaluationResponse(
            evaluation=pb.Evaluation.FromString(chosen.payload), versions=[v.version for v in versions]
        )

    async def GetVerifiedSavingsTotals(
        self, request: pb.GetVerifiedSavingsTotalsRequest, context: Context
    ) -> pb.GetVerifiedSavingsTotalsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        for i, number in enumerate(request.group_by):
            if number not in pb.SavingsDimension.values() or number == pb.SAVINGS_DIMENSION_UNSPECIFIED:
                raise _fail(f"group_by[{i}]", "MEASURE_TYPE, OPERATOR or PROVINCE")
        scope = _narrowed(scope_of(caller), _division_prefix(request.division_prefix))
        async with self.database.session() as session:
            rows = await store.verified_evaluations(session, scope)
        by_id = {row.evaluation_id: row for row in rows}
        dims = set(request.group_by)

        def key(evaluation: Any) -> tuple[str, str, str]:
            row = by_id[evaluation.evaluation_id]
            return (
                row.measure_type if pb.SAVINGS_DIMENSION_MEASURE_TYPE in dims else "",
                row.operator_id if pb.SAVINGS_DIMENSION_OPERATOR in dims else "",
                row.county_code[:2] if pb.SAVINGS_DIMENSION_PROVINCE in dims else "",
            )

        domain = [evaluations.evaluation_of(row) for row in rows]
        totals = verified_savings_totals(domain, key)
        counts: dict[tuple[str, str, str], int] = {}
        for evaluation in latest_verified(domain).values():
            counts[key(evaluation)] = counts.get(key(evaluation), 0) + 1
        return pb.GetVerifiedSavingsTotalsResponse(
            totals=[
                pb.SavingsTotal(
                    measure_type=MEASURE_TYPES.name_to_proto(kind),
                    operator_id=operator,
                    province_code=province,
                    verified_savings_kwh=value,
                    evaluations=counts[(kind, operator, province)],
                )
                for (kind, operator, province), value in sorted(totals.items())
            ]
        )


# ---- conversions -----------------------------------------------------------------------------------------------


def _fingerprint(request: Any, caller: Caller) -> dict[str, object]:
    query = type(request)()
    query.CopyFrom(request)
    query.ClearField("page_token")
    query.ClearField("page_size")
    return {"q": query.SerializeToString(deterministic=True).hex(), "who": caller.participant_id}


def _required_period(holder: Any, name: str) -> Period:
    found: list[FieldViolation] = []
    period = period_from_proto(holder, name, name, found)
    if found or period is None:
        raise InvalidArgument(found)
    return period


def _reaches(edges: Sequence[tuple[str, str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` along the (from, to) edges."""
    following: dict[str, list[str]] = {}
    for a, b in edges:
        following.setdefault(a, []).append(b)
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for nxt in following.get(node, []):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def catalogue_entry_from_proto(message: pb.CatalogueEntry) -> tuple[CatalogueEntry, list[list[float]]]:
    found: list[FieldViolation] = []
    klass = EQUIPMENT_CLASSES.required(message.equipment_class, "entry.equipment_class", found)
    rated = quantity_from_proto(message, "rated_capacity", "entry.rated_capacity", found)
    ports: dict[str, PowerPort | None] = {}
    for name in ("input", "output"):
        ports[name] = None
        if message.HasField(name):
            port = getattr(message, name)
            current = CURRENT_KINDS.required(port.current, f"entry.{name}.current", found)
            voltage = VOLTAGE_CLASSES.required(port.voltage_class, f"entry.{name}.voltage_class", found)
            if current is not None and voltage is not None:
                ports[name] = PowerPort(current, voltage)
    points = [CurvePoint(p.load_fraction, p.efficiency) for p in message.efficiency_curve]
    curve: EfficiencyCurve | None = None
    if points:
        problems = curve_violations(points, "entry.efficiency_curve")
        found += problems
        if not problems:
            curve = EfficiencyCurve(tuple(points))
    losses = None
    if message.HasField("transformer_losses"):
        losses = TransformerLosses(message.transformer_losses.no_load_loss_w, message.transformer_losses.load_loss_w)
    if found or klass is None or rated is None:
        raise InvalidArgument(found)
    entry = CatalogueEntry(
        equipment_class=klass,
        manufacturer=message.manufacturer.strip(),
        model=message.model.strip(),
        rated_capacity=rated,
        input=ports["input"],
        output=ports["output"],
        efficiency_curve=curve,
        transformer_losses=losses,
        grade=grade_from_proto(message, "grade"),
        listed_in_recommended_catalogue=message.listed_in_recommended_catalogue,
        listing_editions=tuple(e.strip() for e in message.listing_editions),
    )
    problems = catalogue_entry_violations(entry, "entry")
    if problems:
        raise InvalidArgument(problems)
    return entry, [[p.load_fraction, p.efficiency] for p in points]


def catalogue_message(row: CatalogueEntryRow) -> pb.CatalogueEntry:
    message = pb.CatalogueEntry(
        catalogue_entry_id=row.catalogue_entry_id,
        equipment_class=EQUIPMENT_CLASSES.name_to_proto(row.equipment_class),
        manufacturer=row.manufacturer,
        model=row.model,
        rated_capacity=pb.Quantity(value=row.rated_value, unit=UNITS.name_to_proto(row.rated_unit)),
        efficiency_curve=[pb.EfficiencyPoint(load_fraction=a, efficiency=b) for a, b in json.loads(row.curve_json)],
        listed_in_recommended_catalogue=row.listed,
        listing_editions=[e for e in row.listing_editions.split(",") if e],
        created_by=row.created_by,
        create_time=moment_to_proto(utc(row.created_at)),
    )
    if row.input_current:
        message.input.CopyFrom(
            pb.PowerPort(
                current=CURRENT_KINDS.name_to_proto(row.input_current),
                voltage_class=VOLTAGE_CLASSES.name_to_proto(row.input_voltage_class),
            )
        )
    if row.output_current:
        message.output.CopyFrom(
            pb.PowerPort(
                current=CURRENT_KINDS.name_to_proto(row.output_current),
                voltage_class=VOLTAGE_CLASSES.name_to_proto(row.output_voltage_class),
            )
        )
    if row.no_load_loss_w is not None and row.load_loss_w is not None:
        message.transformer_losses.CopyFrom(
            pb.TransformerLosses(no_load_loss_w=row.no_load_loss_w, load_loss_w=row.load_loss_w)
        )
    if row.grade is not None:
        message.grade.CopyFrom(pb.GradeRating(grade=row.grade, standard=row.grade_standard, edition=row.grade_edition))
    return message


def procurement_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = False
) -> tuple[dt.date, bool, GradeRating | None, str, str] | None:
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    message: pb.ProcurementRecord = getattr(holder, name)
    before = len(found)
    day = date_from_proto(message, "procurement_date", f"{field}.procurement_date", found)
    if day is not None and day > today():
        found.append(FieldViolation(f"{field}.procurement_date", "after today"))
    grade = grade_from_proto(message, "grade_at_procurement")
    if grade is not None:
        found += grade_violations(grade, f"{field}.grade_at_procurement")
    order = _text(message.purchase_order, f"{field}.purchase_order", found, limit=100)
    supplier = _text(message.supplier, f"{field}.supplier", found, limit=200)
    if len(found) > before or day is None:
        return None
    return day, message.listed_at_procurement, grade, order, supplier


def _apply_procurement(row: AssetRow, record: tuple[dt.date, bool, GradeRating | None, str, str]) -> None:
    day, listed, grade, order, supplier = record
    row.procured_on = day
    row.listed_at_procurement = listed
    row.grade_at_procurement = grade.grade if grade else None
    row.grade_standard_at_procurement = grade.standard if grade else ""
    row.grade_edition_at_procurement = grade.edition if grade else ""
    row.purchase_order = order
    row.supplier = supplier


def transition_message(row: AssetTransitionRow) -> pb.LifecycleTransition:
    return pb.LifecycleTransition(
        from_state=LIFECYCLE_STATES.name_to_proto(row.from_state),
        to_state=LIFECYCLE_STATES.name_to_proto(row.to_state),
        effective_date=date_to_proto(row.effective_date),
        note=row.note,
        recorded_by=row.recorded_by,
        record_time=moment_to_proto(utc(row.recorded_at)),
    )


def asset_message(row: AssetRow, history: Sequence[AssetTransitionRow] = ()) -> pb.Asset:
    procurement = figures.procurement_of(row)
    basis = high_efficiency_basis(procurement)
    message = pb.Asset(
        asset_id=row.asset_id,
        site_id=row.site_id,
        catalogue_entry_id=row.catalogue_entry_id or "",
        equipment_class=EQUIPMENT_CLASSES.name_to_proto(row.equipment_class),
        rated_capacity=quantity_to_proto(figures.rated_of(row)),
        serial_number=row.serial_number,
        asset_tag=row.asset_tag,
        lifecycle_state=LIFECYCLE_STATES.name_to_proto(row.lifecycle_state),
        lifecycle_date=date_to_proto(row.lifecycle_date),
        redundancy_group_id=row.redundancy_group_id or "",
        operator_id=row.operator_id,
        county_code=row.county_code,
        high_efficiency_basis=HIGH_EFFICIENCY_BASES.name_to_proto(basis.value if basis else ""),
        transitions=[transition_message(t) for t in history],
    )
    if row.procured_on is not None and procurement is not None:
        message.procurement.CopyFrom(
            pb.ProcurementRecord(
                procurement_date=date_to_proto(row.procured_on),
                listed_at_procurement=procurement.listed_at_procurement,
                grade_at_procurement=grade_to_proto(procurement.grade_at_procurement),
                purchase_order=row.purchase_order,
                supplier=row.supplier,
            )
        )
    return message


def group_message(row: RedundancyGroupRow, limit: float) -> pb.RedundancyGroup:
    return pb.RedundancyGroup(
        redundancy_group_id=row.redundancy_group_id,
        site_id=row.site_id,
        name=row.name,
        scheme=REDUNDANCY_SCHEMES.to_proto(RedundancyScheme(row.scheme)),
        units=row.units or 0,
        redundant_units=row.redundant_units or 0,
        design_max_load_rate=limit,
    )


def link_message(row: PowerLinkRow) -> pb.PowerLink:
    return pb.PowerLink(
        power_link_id=row.power_link_id,
        from_asset_id=row.from_asset_id,
        to_asset_id=row.to_asset_id,
        medium=VOLTAGE_CLASSES.name_to_proto(row.medium),
        path=row.path,
    )


def meter_message(row: MeterRow) -> pb.Meter:
    message = pb.Meter(
        meter_id=row.meter_id,
        site_id=row.site_id,
        asset_id=row.asset_id or "",
        name=row.name,
        quantity=METER_QUANTITIES.name_to_proto(row.quantity),
        unit=UNITS.name_to_proto(row.unit),
        mode=READING_MODES.name_to_proto(row.mode),
        interval=duration_to_proto(row.interval_s),
        current=CURRENT_KINDS.name_to_proto(row.current),
        direction=DIRECTIONS.name_to_proto(row.direction),
        role=METER_ROLES.name_to_proto(row.role),
        it_measurement_point=IT_POINTS.name_to_proto(row.it_measurement_point),
        register_max=row.register_max or 0.0,
    )
    if row.rated_max_value is not None:
        message.rated_max.CopyFrom(pb.Quantity(value=row.rated_max_value, unit=UNITS.name_to_proto(row.rated_max_unit)))
    return message


def reading_message(start: int, end: int, value: float, consumption: float | None, flags: int) -> pb.Reading:
    message = pb.Reading(
        start_time=seconds_to_proto(start),
        end_time=seconds_to_proto(end),
        value=value,
        estimated=bool(flags & ingest.ESTIMATED_BIT),
        flags=[QUALITY_FLAGS.to_proto(f) for f in store.bits_to_flags(flags)],
    )
    if consumption is not None:
        message.consumption = consumption
    return message


def measure_message(row: MeasureRow) -> pb.Measure:
    message = pb.Measure(
        measure_id=row.measure_id,
        site_id=row.site_id,
        measure_type=MEASURE_TYPES.name_to_proto(row.measure_type),
        description=row.description,
        asset_ids=[a for a in row.asset_ids.split(",") if a],
        installation=period_to_proto(Period(utc(row.installation_start), utc(row.installation_end))),
        operator_id=row.operator_id,
    )
    if row.claimed_savings_kwh_per_year is not None:
        message.claimed_savings_kwh_per_year = row.claimed_savings_kwh_per_year
    return message


def series_message(row: IndependentSeriesRow) -> pb.IndependentSeries:
    return pb.IndependentSeries(
        series_id=row.series_id,
        site_id=row.site_id,
        name=row.name,
        unit=UNITS.name_to_proto(row.unit),
        unit_label=row.unit_label,
        aggregation=SERIES_AGGREGATIONS.name_to_proto(row.aggregation),
        interval=duration_to_proto(row.interval_s),
        source=row.source,
        created_by=row.created_by,
        create_time=moment_to_proto(utc(row.created_at)),
    )


def adjustments_from_proto(messages: Sequence[pb.NonRoutineAdjustment]) -> list[NonRoutineAdjustment]:
    found: list[FieldViolation] = []
    adjustments = []
    for i, message in enumerate(messages):
        if not math.isfinite(message.amount_kwh):
            found.append(FieldViolation(f"adjustments[{i}].amount_kwh", "must be a finite number"))
        note = _text(message.note, f"adjustments[{i}].note", found, limit=2_000, required=True)
        adjustments.append(NonRoutineAdjustment(message.amount_kwh, note))
    if found:
        raise InvalidArgument(found)
    return adjustments


def batch_problem(index: int, meter_id: str, error: DomainError, series_id: str = "") -> pb.BatchProblem:
    violations = error.violations if isinstance(error, InvalidArgument) else []
    return pb.BatchProblem(
        message_index=index,
        meter_id=meter_id,
        series_id=series_id,
        code=error.code.name,
        message=error.message,
        field_problems=field_problems(violations),
    )
