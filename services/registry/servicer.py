"""The registry's gRPC servicer: reads the caller, applies the domain rules, writes through the store,
and appends the change's event in the same transaction. Nothing is written when any check fails."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import caller_of, require_any_role, require_authenticated
from meshkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from meshkit.ids import is_uuid, new_id
from meshkit.paging import decode_token, encode_token, page_size
from meshkit.server import ServiceRuntime
from meshkit.tables import utcnow
from services.registry import events, store
from services.registry.domain import rules
from services.registry.domain.coverage import compute_coverage, national_coverage
from services.registry.domain.credit_code import normalise_credit_code, validate_credit_code
from services.registry.domain.divisions import COVERAGE_LEVELS, DivisionTable
from services.registry.domain.geo import GeoPoint, bounding_box, haversine_m, validate_wgs84
from services.registry.importer import ImportBatch
from services.registry.mapping import (
    accreditation_name,
    cooperation_message,
    credential_message,
    enum_name,
    enum_violations,
    facility_data,
    facility_fields,
    facility_message,
    facility_type_name,
    from_timestamp,
    mode_name,
    new_facility_row,
    participant_fields,
    participant_message,
    qualifications_to_json,
    role_name,
    status_name,
)
from services.registry.tables import CooperationRow, CredentialRow, FacilityRow, ParticipantRow, StatusChangeRow

Context = grpc.aio.ServicerContext[Any, Any]

PARTICIPANT_MASK = frozenset(
    {"legal_name", "short_name", "roles", "supervised_division_code", "qualifications", "contact_phone"}
)
# Fields only a regulator or platform operator may change (a participant may not grant itself a role).
PRIVILEGED_PARTICIPANT_FIELDS = frozenset({"roles", "supervised_division_code", "legal_name"})
FACILITY_MASK = frozenset(
    {
        "name",
        "county_code",
        "location",
        "address",
        "opening_hours",
        "phone",
        "recycling_modes",
        "storage_limits",
        "safety",
    }
)
MAX_NEAREST = 50
DEFAULT_NEAREST = 10
MAX_RADIUS_KM = 200.0
DEFAULT_RADIUS_KM = 50.0
KEY_PREFIX = "gmk_"


def hash_secret(secret: str) -> str:
    # API secrets are 256 random bits, so a fast hash is enough (no password-style stretching needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def require_id(field: str, value: str) -> str:
    if not is_uuid(value):
        raise InvalidArgument([FieldViolation(field, "must be an id this registry issued (a UUID)")])
    return value


def require_status_and_reason(target: str, reason: str) -> None:
    """Status and accreditation changes name a known target and say why."""
    violations = rules.text_violations("reason", reason, required=True, limit=500)
    if not target:
        violations.append(FieldViolation("status", "required"))
    if violations:
        raise InvalidArgument(violations)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, runtime: ServiceRuntime, divisions: DivisionTable) -> None:
        self.runtime = runtime
        self.divisions = divisions

    @property
    def settings(self) -> Any:
        return self.runtime.settings

    def _transaction(self) -> Any:
        return self.runtime.database.transaction()

    async def _participant_message(self, session: AsyncSession, row: ParticipantRow) -> pb.Participant:
        return participant_message(row, await store.status_history(session, row.participant_id))

    # ---- participants ------------------------------------------------------------------------

    async def RegisterParticipant(
        self, request: pb.RegisterParticipantRequest, context: Context
    ) -> pb.RegisterParticipantResponse:
        caller = caller_of(context)
        require_any_role(caller, ["REGULATOR", "PLATFORM_OPERATOR"], "registering a participant")
        incoming = request.participant
        code = normalise_credit_code(incoming.credit_code)
        fields = participant_fields(incoming)
        violations = rules.participant_violations(
            rules.ParticipantFields(**{**fields.__dict__, "credit_code": code}), self.divisions
        )
        violations += enum_violations("participant.roles", list(fields.roles))
        if violations:
            raise InvalidArgument(violations)
        if "PLATFORM_OPERATOR" in fields.roles and not caller.is_platform_operator:
            raise PermissionDenied("only a platform operator may register another platform operator")
        now = utcnow()
        row = ParticipantRow(
            participant_id=new_id(),
            credit_code=code,
            legal_name=fields.legal_name.strip(),
            short_name=fields.short_name.strip(),
            roles=",".join(rules.roles_from(fields.roles)),
            supervised_division_code=fields.supervised_division_code,
            status="PENDING_REVIEW",
            registration_division_code=validate_credit_code(code).division_code or "",
            qualifications_json=qualifications_to_json(list(incoming.qualifications)),
            contact_phone=fields.contact_phone,
            version=1,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self._transaction() as session:
                if await store.find_participant_by_code(session, code) is not None:
                    raise AlreadyExists("participant", code)
                session.add(row)
                session.add(
                    StatusChangeRow(
                        participant_id=row.participant_id,
                        status="PENDING_REVIEW",
                        changed_by=caller.participant_id or "",
                        reason="registered",
                        changed_at=now,
                    )
                )
                await session.flush()
                message = await self._participant_message(session, row)
                events.participant_changed(session, self.settings, "registered", message)
        except IntegrityError as error:  # a concurrent registration of the same code won
            raise AlreadyExists("participant", code) from error
        self.runtime.relay.notify()
        return pb.RegisterParticipantResponse(participant=message)

    async def GetParticipant(self, request: pb.GetParticipantRequest, context: Context) -> pb.GetParticipantResponse:
        scope = rules.read_scope(caller_of(context))
        participant_id, code, division = "", "", ""
        if request.participant_id:
            participant_id = require_id("participant_id", request.participant_id)
            rules.check_participant_id_readable(scope, participant_id)  # before looking: tells nothing
        elif request.credit_code:
            code = normalise_credit_code(request.credit_code)
            division = validate_credit_code(code).division_code or ""  # where it would be registered
        else:
            raise InvalidArgument([FieldViolation("participant_id", "participant_id or credit_code is required")])
        async with self.runtime.database.session() as session:
            if participant_id:
                row = await store.find_participant(session, participant_id)
            else:
                row = await store.find_participant_by_code(session, code)
            if row is None:
                if rules.may_learn_absence(scope, participant_id=participant_id, division_code=division):
                    raise NotFound("participant", participant_id or code)
                raise rules.read_denied("participant")
            visibility = rules.participant_visibility(scope, row.participant_id, row.registration_division_code)
            if visibility is rules.Visibility.IF_OPERATING_IN_REGION:
                operates = await store.operates_facility_in(session, row.participant_id, scope.region)
                visibility = rules.Visibility.VISIBLE if operates else rules.Visibility.HIDDEN
            if visibility is not rules.Visibility.VISIBLE:
                raise rules.read_denied("participant")
            return pb.GetParticipantResponse(participant=await self._participant_message(session, row))

    async def ListParticipants(
        self, request: pb.ListParticipantsRequest, context: Context
    ) -> pb.ListParticipantsResponse:
        scope = rules.read_scope(caller_of(context))
        limit = page_size(request.page_size)
        role, status = role_name(request.role), status_name(request.status)
        prefix = rules.check_division_prefix("division_prefix", request.division_prefix)
        allowed = rules.participant_list_filter(scope, prefix)
        # The token is bound to the query as run (with the caller's scope), not only as asked.
        filters = {
            "role": role,
            "status": status,
            "prefix": allowed.division_prefix,
            "participant": allowed.participant_id,
        }
        after = decode_token(request.page_token, filters)
        async with self.runtime.database.session() as session:
            rows = await store.list_participants(
                session,
                role=role,
                status=status,
                division_prefix=allowed.division_prefix,
                participant_id=allowed.participant_id,
                after=after,
                limit=limit + 1,
            )
            messages = [await self._participant_message(session, row) for row in rows[:limit]]
        token = encode_token(rows[limit - 1].participant_id, filters) if len(rows) > limit else ""
        return pb.ListParticipantsResponse(participants=messages, next_page_token=token)

    async def UpdateParticipant(
        self, request: pb.UpdateParticipantRequest, context: Context
    ) -> pb.UpdateParticipantResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        incoming = request.participant
        participant_id = require_id("participant.participant_id", incoming.participant_id)
        requested, mask_problems = rules.update_mask_paths(
            request.update_mask.paths, PARTICIPANT_MASK, identifiers=frozenset({"participant_id"})
        )
        if mask_problems:
            raise InvalidArgument(mask_problems)
        paths = {path.split(".", 1)[0] for path in requested}
        async with self._transaction() as session:
            row = await store.get_participant(session, participant_id)
            own = caller.participant_id == participant_id
            privileged = caller.supervises(row.registration_division_code)
            if not (own or privileged) or (paths & PRIVILEGED_PARTICIPANT_FIELDS and not privileged):
                raise PermissionDenied(
                    f"changing {', '.join(sorted(paths))} of this participant is not yours to do",
                    reason="NOT_OWNER_OR_REGULATOR",
                )
            merged = pb.Participant()
            merged.CopyFrom(participant_message(row))
            for path in paths:
                if path in ("roles", "qualifications"):
                    merged.ClearField(path)  # type: ignore[arg-type]
                    getattr(merged, path).extend(getattr(incoming, path))
                else:
                    setattr(merged, path, getattr(incoming, path))
            fields = participant_fields(merged)
            violations = rules.participant_violations(fields, self.divisions, check_credit_code=False)
            violations += enum_violations("participant.roles", list(fields.roles))
            if violations:
                raise InvalidArgument(violations)
            await store.bump(
                session,
                ParticipantRow,
                ParticipantRow.participant_id,
                participant_id,
                incoming.version,
                {
                    "legal_name": fields.legal_name.strip(),
                    "short_name": fields.short_name.strip(),
                    "roles": ",".join(rules.roles_from(fields.roles)),
                    "supervised_division_code": fields.supervised_division_code,
                    "qualifications_json": qualifications_to_json(list(merged.qualifications)),
                    "contact_phone": fields.contact_phone,
                    "updated_at": utcnow(),
                },
            )
            await session.refresh(row)
            message = await self._participant_message(session, row)
            events.participant_changed(session, self.settings, "updated", message)
        self.runtime.relay.notify()
        return pb.UpdateParticipantResponse(participant=message)

    async def ChangeParticipantStatus(
        self, request: pb.ChangeParticipantStatusRequest, context: Context
    ) -> pb.ChangeParticipantStatusResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        participant_id = require_id("participant_id", request.participant_id)
        target = status_name(request.status)
        require_status_and_reason(target, request.reason)
        async with self._transaction() as session:
            row = await store.get_participant(session, participant_id)
            rules.authorise_participant_admin(caller, row.registration_division_code, "changing a participant's status")
            rules.check_participant_transition(row.status, target)
            now = utcnow()
            await store.bump(
                session, ParticipantRow, ParticipantRow.participant_id, participant_id, request.version,
                {"status": target, "updated_at": now},
            )  # fmt: skip
            session.add(
                StatusChangeRow(
                    participant_id=participant_id,
                    status=target,
                    changed_by=caller.participant_id or "",
                    reason=request.reason.strip(),
                    changed_at=now,
                )
            )
            await session.flush()
            await session.refresh(row)
            message = await self._participant_message(session, row)
            events.participant_changed(session, self.settings, "status_changed", message)
        self.runtime.relay.notify()
        return pb.ChangeParticipantStatusResponse(participant=message)

    async def LinkCooperation(self, request: pb.LinkCooperationRequest, context: Context) -> pb.LinkCooperationResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        incoming = request.cooperation
        violations = []
        for field in ("producer_id", "operator_id"):
            if not is_uuid(getattr(incoming, field)):
                violations.append(FieldViolation(f"cooperation.{field}", "required: a participant id"))
        kind = enum_name(pb.CooperationKind, incoming.kind, "COOPERATION_KIND_")
        if not kind:
            violations.append(FieldViolation("cooperation.kind", "CO_BUILT or ENTRUSTED"))
        valid_from = from_timestamp(incoming.valid_from, incoming.HasField("valid_from"), "cooperation.valid_from")
        valid_to = from_timestamp(incoming.valid_to, incoming.HasField("valid_to"), "cooperation.valid_to")
        if valid_from and valid_to and valid_to <= valid_from:
            violations.append(FieldViolation("cooperation.valid_to", "must be after valid_from"))
        if violations:
            raise InvalidArgument(violations)
        async with self._transaction() as session:
            producer = await store.get_participant(session, incoming.producer_id)
            operator = await store.get_participant(session, incoming.operator_id)
            if not {"EBIKE_PRODUCER", "BATTERY_PRODUCER"} & set(producer.roles.split(",")):
                raise FailedPrecondition(
                    "the producer side must be an e-bike or battery producer", reason="NOT_PRODUCER"
                )
            if caller.participant_id not in (producer.participant_id, operator.participant_id) and not (
                caller.supervises(operator.registration_division_code)
            ):
                raise PermissionDenied("a cooperation is recorded by one of its parties or a regulator")
            for facility_id in incoming.facility_ids:
                facility = await store.get_facility(session, require_id("cooperation.facility_ids", facility_id))
                if facility.operator_id != operator.participant_id:
                    raise FailedPrecondition(
                        f"facility {facility_id} is not run by the operator", reason="FACILITY_NOT_OPERATORS"
                    )
            row = CooperationRow(
                cooperation_id=new_id(),
                producer_id=producer.participant_id,
                operator_id=operator.participant_id,
                kind=kind,
                facility_ids=",".join(incoming.facility_ids),
                valid_from=valid_from,
                valid_to=valid_to,
                created_at=utcnow(),
            )
            session.add(row)
            message = cooperation_message(row)
            events.cooperation_linked(session, self.settings, message)
        self.runtime.relay.notify()
        return pb.LinkCooperationResponse(cooperation=message)

    async def ListCooperations(
        self, request: pb.ListCooperationsRequest, context: Context
    ) -> pb.ListCooperationsResponse:
        scope = rules.read_scope(caller_of(context))
        if not request.producer_id and not request.operator_id:
            raise InvalidArgument([FieldViolation("producer_id", "producer_id or operator_id is required")])
        allowed = rules.cooperation_list_filter(scope)
        async with self.runtime.database.session() as session:
            rows = await store.list_cooperations(
                session,
                request.producer_id,
                request.operator_id,
                party_id=allowed.party_id,
                party_region=allowed.party_region,
            )
        return pb.ListCooperationsResponse(cooperations=[cooperation_message(row) for row in rows])

    # ---- facilities --------------------------------------------------------------------------

    async def RegisterFacility(
        self, request: pb.RegisterFacilityRequest, context: Context
    ) -> pb.RegisterFacilityResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        incoming = request.facility
        fields = facility_fields(incoming)
        violations = rules.facility_violations(fields, self.divisions)
        violations += enum_violations("facility.recycling_modes", list(fields.recycling_modes))
        if not is_uuid(incoming.operator_id):
            violations.append(FieldViolation("facility.operator_id", "required: the operating participant's id"))
        if violations:
            raise InvalidArgument(violations)
        async with self._transaction() as session:
            operator = await store.get_participant(session, incoming.operator_id)
            rules.authorise_facility_write(caller, operator.participant_id, fields.county_code)
            if operator.status in ("SUSPENDED", "REVOKED"):
                raise FailedPrecondition(
                    f"the operator is {operator.status.lower()}", reason="OPERATOR_NOT_ACTIVE",
                    metadata={"status": operator.status},
                )  # fmt: skip
            key = (operator.participant_id, fields.operator_facility_code.strip())
            if key in await store.facilities_by_codes(session, [key]):
                raise AlreadyExists("facility", f"{key[1]} of operator {key[0]}")
            row = new_facility_row(operator.participant_id, incoming, caller.participant_id or "", "registered")
            session.add(row)
            await session.flush()
            message = facility_message(row)
            events.facility_changed(session, self.settings, "registered", message)
        self.runtime.relay.notify()
        return pb.RegisterFacilityResponse(facility=message)

    async def GetFacility(self, request: pb.GetFacilityRequest, context: Context) -> pb.GetFacilityResponse:
        scope = rules.read_scope(caller_of(context))
        facility_id = require_id("facility_id", request.facility_id)
        async with self.runtime.database.session() as session:
            row = await store.find_facility(session, facility_id)
        if row is None:
            if rules.may_learn_absence(scope):
                raise NotFound("facility", facility_id)
            raise rules.read_denied("facility")
        rules.authorise_facility_read(scope, row.operator_id, row.county_code)
        return pb.GetFacilityResponse(facility=facility_message(row))

    async def ListFacilities(self, request: pb.ListFacilitiesRequest, context: Context) -> pb.ListFacilitiesResponse:
        scope = rules.read_scope(caller_of(context))
        limit = page_size(request.page_size)
        prefix = rules.check_division_prefix("division_prefix", request.division_prefix)
        if request.operator_id:
            require_id("operator_id", request.operator_id)
        allowed = rules.facility_list_filter(scope, request.operator_id, prefix)
        # The token is bound to the query as run (with the caller's scope), not only as asked.
        filters = {
            "operator": allowed.operator_id,
            "type": facility_type_name(request.facility_type),
            "accreditation": accreditation_name(request.accreditation_status),
            "prefix": allowed.division_prefix,
        }
        after = decode_token(request.page_token, filters)
        async with self.runtime.database.session() as session:
            rows = await store.list_facilities(
                session,
                operator_id=allowed.operator_id,
                facility_type=str(filters["type"]),
                accreditation=str(filters["accreditation"]),
                division_prefix=allowed.division_prefix,
                after=after,
                limit=limit + 1,
            )
        token = encode_token(rows[limit - 1].facility_id, filters) if len(rows) > limit else ""
        return pb.ListFacilitiesResponse(facilities=[facility_message(r) for r in rows[:limit]], next_page_token=token)

    async def UpdateFacility(self, request: pb.UpdateFacilityRequest, context: Context) -> pb.UpdateFacilityResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        incoming = request.facility
        facility_id = require_id("facility.facility_id", incoming.facility_id)
        requested, mask_problems = rules.update_mask_paths(
            request.update_mask.paths, FACILITY_MASK, identifiers=frozenset({"facility_id"})
        )
        if mask_problems:
            raise InvalidArgument(mask_problems)
        paths = set(requested)
        async with self._transaction() as session:
            row = await store.get_facility(session, facility_id)
            rules.authorise_facility_write(caller, row.operator_id, row.county_code)
            merged = facility_message(row)
            for path in paths:
                if "." in path:  # part of a message field: location.latitude changes the latitude only
                    FieldMask(paths=[path]).MergeMessage(incoming, merged)
                elif path == "recycling_modes":
                    merged.ClearField("recycling_modes")
                    merged.recycling_modes.extend(incoming.recycling_modes)
                elif path in ("location", "storage_limits", "safety"):
                    getattr(merged, path).CopyFrom(getattr(incoming, path))
                else:
                    setattr(merged, path, getattr(incoming, path))
            fields = facility_fields(merged)
            violations = rules.facility_violations(fields, self.divisions)
            violations += enum_violations("facility.recycling_modes", list(fields.recycling_modes))
            if violations:
                raise InvalidArgument(violations)
            await store.bump(
                session, FacilityRow, FacilityRow.facility_id, facility_id, incoming.version,
                {**facility_data(merged), "updated_at": utcnow()},
            )  # fmt: skip
            await session.refresh(row)
            message = facility_message(row)
            events.facility_changed(session, self.settings, "updated", message)
        self.runtime.relay.notify()
        return pb.UpdateFacilityResponse(facility=message)

    async def ChangeAccreditation(
        self, request: pb.ChangeAccreditationRequest, context: Context
    ) -> pb.ChangeAccreditationResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        facility_id = require_id("facility_id", request.facility_id)
        target = accreditation_name(request.status)
        require_status_and_reason(target, request.reason)
        async with self._transaction() as session:
            row = await store.get_facility(session, facility_id)
            rules.authorise_accreditation(caller, row.operator_id, row.county_code, row.accreditation_status, target)
            rules.check_accreditation_transition(row.accreditation_status, target)
            now = utcnow()
            await store.bump(
                session, FacilityRow, FacilityRow.facility_id, facility_id, request.version,
                {
                    "accreditation_status": target,
                    "accreditation_changed_by": caller.participant_id or "",
                    "accreditation_reason": request.reason.strip(),
                    "accreditation_changed_at": now,
                    "updated_at": now,
                },
            )  # fmt: skip
            await session.refresh(row)
            message = facility_message(row)
            events.facility_changed(session, self.settings, "accreditation_changed", message)
        self.runtime.relay.notify()
        return pb.ChangeAccreditationResponse(facility=message)

    async def ImportFacilities(
        self, request_iterator: AsyncIterator[pb.ImportFacilitiesRequest], context: Context
    ) -> pb.ImportFacilitiesResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        batch = ImportBatch(self.runtime, self.divisions, caller)
        async for row in request_iterator:
            await batch.add(row)
        await batch.flush()
        self.runtime.relay.notify()
        return batch.summary()

    # ---- public queries ----------------------------------------------------------------------

    async def FindNearestOutlets(
        self, request: pb.FindNearestOutletsRequest, context: Context
    ) -> pb.FindNearestOutletsResponse:
        """Public (no credential): listed hand-in points only, and of each only what a consumer needs to go
        there — the site's name, type, county, address, position, hours, own phone and modes. Never the
        operator (id, credit code, contact), its own site code, storage limits or safety data."""
        lat, lon = request.location.latitude, request.location.longitude
        violations = [FieldViolation(f"location.{v.field}", v.message) for v in validate_wgs84(lon=lon, lat=lat)]
        if not request.HasField("location"):
            violations = [FieldViolation("location", "required")]
        if request.limit < 0 or request.limit > MAX_NEAREST:
            violations.append(FieldViolation("limit", f"0 to {MAX_NEAREST}"))
        if not 0 <= request.max_distance_km <= MAX_RADIUS_KM:
            violations.append(FieldViolation("max_distance_km", f"0 to {MAX_RADIUS_KM:.0f}"))
        types = [facility_type_name(t) for t in request.facility_types]
        violations += rules.public_outlet_type_violations("facility_types", types)
        if violations:
            raise InvalidArgument(violations)
        limit = request.limit or DEFAULT_NEAREST
        radius_m = (request.max_distance_km or DEFAULT_RADIUS_KM) * 1000
        center = GeoPoint(lon=lon, lat=lat)
        mode = mode_name(request.recycling_mode)
        found: list[tuple[float, FacilityRow]] = []
        # Grow the box until enough sites are found: dense cities answer from a small box.
        search_m = min(radius_m, 5_000.0)
        async with self.runtime.database.session() as session:
            while True:
                rows = await store.listed_in_box(
                    session, bounding_box(center, search_m), types or list(rules.PUBLIC_OUTLET_TYPES), mode
                )
                found = sorted(
                    (
                        (d, row)
                        for row in rows
                        if (d := haversine_m(center, GeoPoint(lon=row.longitude, lat=row.latitude))) <= search_m
                    ),
                    key=lambda item: item[0],
                )
                if len(found) >= limit or search_m >= radius_m:
                    break
                search_m = min(radius_m, search_m * 4)
        return pb.FindNearestOutletsResponse(
            outlets=[
                pb.NearbyOutlet(
                    facility_id=row.facility_id,
                    name=row.name,
                    facility_type=pb.FacilityType.Value(f"FACILITY_TYPE_{row.facility_type}"),
                    county_code=row.county_code,
                    address=row.address,
                    location=pb.GeoPoint(latitude=row.latitude, longitude=row.longitude),
                    distance_m=round(distance, 1),
                    opening_hours=row.opening_hours,
                    phone=row.phone,
                    recycling_modes=[
                        pb.RecyclingMode.Value(f"RECYCLING_MODE_{m}") for m in row.recycling_modes.split(",") if m
                    ],
                )
                for distance, row in found[:limit]
            ]
        )

    async def GetCountyCoverage(
        self, request: pb.GetCountyCoverageRequest, context: Context
    ) -> pb.GetCountyCoverageResponse:
        province = request.province_code.strip()
        provinces = {code[:2] for code in self.divisions.counts_by_province(COVERAGE_LEVELS)}
        if province and province not in provinces:
            raise InvalidArgument([FieldViolation("province_code", f"{province!r} is not a mainland province code")])
        types = ["RECYCLING_OUTLET", "TEMP_STORAGE_POINT"]
        async with self.runtime.database.session() as session:
            covered = await store.covered_counties(session, types, province)
        facilities = [(code, "RECYCLING_OUTLET", "LISTED") for code in covered]
        counted = [pb.FacilityType.Value(f"FACILITY_TYPE_{t}") for t in types]
        if province:
            report = compute_coverage(self.divisions.counties_in_province(province, COVERAGE_LEVELS), facilities)
            return pb.GetCountyCoverageResponse(
                scope=province,
                county_count=report.total,
                covered_count=report.covered,
                ratio=report.ratio,
                uncovered=[pb.County(county_code=c.code, name=c.name) for c in report.uncovered],
                counted_types=counted,
            )
        national = national_coverage(self.divisions, facilities)
        return pb.GetCountyCoverageResponse(
            scope="national",
            county_count=national.national.total,
            covered_count=national.national.covered,
            ratio=national.national.ratio,
            uncovered=[pb.County(county_code=c.code, name=c.name) for c in national.national.uncovered],
            provinces=[
                pb.ProvinceCoverage(
                    province_code=code[:2], county_count=r.total, covered_count=r.covered, ratio=r.ratio
                )
                for code, r in national.by_province.items()
            ],
            counted_types=counted,
        )

    # ---- credentials -------------------------------------------------------------------------

    async def IssueCredential(self, request: pb.IssueCredentialRequest, context: Context) -> pb.IssueCredentialResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        participant_id = require_id("participant_id", request.participant_id)
        violations = rules.text_violations("label", request.label, required=False, limit=100)
        if violations:
            raise InvalidArgument(violations)
        async with self._transaction() as session:
            participant = await store.get_participant(session, participant_id)
            rules.authorise_participant_admin(caller, participant.registration_division_code, "issuing credentials")
            if participant.status != "ACTIVE":
                raise FailedPrecondition(
                    f"credentials are for active participants; this one is {participant.status}",
                    reason="PARTICIPANT_NOT_ACTIVE",
                )
            key_id = KEY_PREFIX + secrets.token_hex(8)
            secret = secrets.token_urlsafe(32)
            row = CredentialRow(
                key_id=key_id,
                participant_id=participant_id,
                secret_hash=hash_secret(secret),
                label=request.label.strip(),
                issued_by=caller.participant_id or "",
                created_at=utcnow(),
            )
            session.add(row)
            events.credential_issued(session, self.settings, credential_message(row))
        self.runtime.relay.notify()
        return pb.IssueCredentialResponse(credential=credential_message(row), api_key=f"{key_id}.{secret}")

    async def ListCredentials(self, request: pb.ListCredentialsRequest, context: Context) -> pb.ListCredentialsResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        participant_id = require_id("participant_id", request.participant_id)
        async with self.runtime.database.session() as session:
            participant = await store.get_participant(session, participant_id)
            if caller.participant_id != participant_id:
                rules.authorise_participant_admin(caller, participant.registration_division_code, "listing credentials")
            rows = await store.list_credentials(session, participant_id)
        return pb.ListCredentialsResponse(credentials=[credential_message(r) for r in rows])

    async def RevokeCredential(
        self, request: pb.RevokeCredentialRequest, context: Context
    ) -> pb.RevokeCredentialResponse:
        caller = caller_of(context)
        require_authenticated(caller)
        if not request.key_id.startswith(KEY_PREFIX) or len(request.key_id) > 32:
            raise InvalidArgument([FieldViolation("key_id", "a key id such as gmk_0123456789abcdef")])
        async with self._transaction() as session:
            row = await store.get_credential(session, request.key_id)
            participant = await store.get_participant(session, row.participant_id)
            if caller.participant_id != row.participant_id:
                rules.authorise_participant_admin(
                    caller, participant.registration_division_code, "revoking credentials"
                )
            if row.revoked_at is not None:
                raise FailedPrecondition("the credential is already revoked", reason="ALREADY_REVOKED")
            row.revoked_at = utcnow()
            row.revoked_by = caller.participant_id or ""
            row.revoke_reason = request.reason.strip()[:500]
            session.add(row)
            message = credential_message(row)
            events.credential_revoked(session, self.settings, message)
        self.runtime.relay.notify()
        return pb.RevokeCredentialResponse(credential=message)

    async def VerifyCredential(
        self, request: pb.VerifyCredentialRequest, context: Context
    ) -> pb.VerifyCredentialResponse:
        key_id, _, secret = request.api_key.partition(".")
        if not key_id.startswith(KEY_PREFIX) or not secret or len(request.api_key) > 100:
            raise Unauthenticated("not an API key this platform issued", reason="MALFORMED_API_KEY")
        async with self.runtime.database.session() as session:
            row = await session.get(CredentialRow, key_id)
            # Compare hashes in constant time, and do the same work whether or not the key exists.
            expected = row.secret_hash if row is not None else hash_secret("")
            matches = hmac.compare_digest(expected, hash_secret(secret))
            if row is None or not matches or row.revoked_at is not None:
                raise Unauthenticated("unknown or revoked API key", reason="INVALID_API_KEY")
            participant = await store.get_participant(session, row.participant_id)
            if participant.status != "ACTIVE":
                raise Unauthenticated(f"the participant is {participant.status}", reason="PARTICIPANT_NOT_ACTIVE")
            return pb.VerifyCredentialResponse(
                credential=credential_message(row), participant=participant_message(participant)
            )
