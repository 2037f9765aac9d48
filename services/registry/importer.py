"""Bulk facility import: rows validated one by one, written in chunks of one transaction each.

Idempotent on (operator, operator_facility_code): a row identical to what is stored writes nothing, a
changed row updates the facility (version + 1, one event), a new row registers it. Importing the same
file twice therefore changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.caller import Caller
from meshkit.errors import DomainError, FieldViolation
from meshkit.ids import is_uuid
from meshkit.tables import utcnow
from services.registry import events, store
from services.registry.domain import rules
from services.registry.domain.credit_code import normalise_credit_code
from services.registry.domain.divisions import DivisionTable
from services.registry.mapping import (
    FACILITY_DATA_COLUMNS,
    enum_violations,
    facility_data,
    facility_fields,
    facility_message,
    new_facility_row,
)
from services.registry.tables import ParticipantRow

if TYPE_CHECKING:
    from meshkit.server import ServiceRuntime

CHUNK_ROWS = 500
MAX_REPORTED_ERRORS = 1_000


@dataclass
class ImportBatch:
    runtime: ServiceRuntime
    divisions: DivisionTable
    caller: Caller
    pending: list[pb.ImportFacilitiesRequest] = field(default_factory=list)
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[pb.ImportRowError] = field(default_factory=list)

    def _reject(self, row_number: int, field_name: str, description: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(pb.ImportRowError(row_number=row_number, field=field_name, description=description))

    async def add(self, row: pb.ImportFacilitiesRequest) -> None:
        self.received += 1
        number = row.row_number or self.received
        fields = facility_fields(row.facility)
        violations = rules.facility_violations(fields, self.divisions)
        violations += enum_violations("facility.recycling_modes", list(fields.recycling_modes))
        if not row.facility.operator_id and not row.operator_credit_code:
            violations.append(FieldViolation("operator_credit_code", "the operator's credit code or id is required"))
        elif row.facility.operator_id and not is_uuid(row.facility.operator_id):
            violations.append(FieldViolation("facility.operator_id", "must be a participant id"))
        elif not row.facility.operator_id:
            # A malformed code gets the checksum's reason, not a fruitless lookup's "no participant".
            violations += rules.credit_code_violations(
                "operator_credit_code", normalise_credit_code(row.operator_credit_code)
            )
        row.row_number = number
        if violations:
            self._reject(number, violations[0].field, "; ".join(f"{v.field}: {v.description}" for v in violations))
            return
        self.pending.append(row)
        if len(self.pending) >= CHUNK_ROWS:
            await self.flush()

    async def flush(self) -> None:
        rows, self.pending = self.pending, []
        if not rows:
            return
        settings = self.runtime.settings
        async with self.runtime.database.transaction() as session:
            codes = {normalise_credit_code(r.operator_credit_code) for r in rows if not r.facility.operator_id}
            by_code = await store.participants_by_codes(session, codes)
            resolved: list[tuple[pb.ImportFacilitiesRequest, str]] = []
            for row in rows:
                number = row.row_number  # add() filled it in when the client sent none
                if row.facility.operator_id:
                    operator = await session.get(ParticipantRow, row.facility.operator_id)
                else:
                    operator = by_code.get(normalise_credit_code(row.operator_credit_code))
                if operator is None:
                    self._reject(number, "operator_credit_code", "no registered participant with this code or id")
                    continue
                if operator.status in ("SUSPENDED", "REVOKED"):
                    self._reject(number, "operator_credit_code", f"the operator is {operator.status.lower()}")
                    continue
                try:
                    rules.authorise_facility_write(
                        self.caller, operator.participant_id, row.facility.county_code.strip()
                    )
                except DomainError as error:
                    self._reject(number, "operator_credit_code", error.message)
                    continue
                resolved.append((row, operator.participant_id))
            existing = await store.facilities_by_codes(
                session, [(op, r.facility.operator_facility_code.strip()) for r, op in resolved]
            )
            now = utcnow()
            for row, operator_id in resolved:
                key = (operator_id, row.facility.operator_facility_code.strip())
                data = facility_data(row.facility)
                current = existing.get(key)
                if current is None:
                    new = new_facility_row(operator_id, row.facility, self.caller.participant_id or "", "imported")
                    session.add(new)
                    existing[key] = new
                    events.facility_changed(session, settings, "registered", facility_message(new))
                    self.created += 1
                elif all(getattr(current, column) == data[column] for column in FACILITY_DATA_COLUMNS):
                    self.unchanged += 1
                else:
                    for column in FACILITY_DATA_COLUMNS:
                        setattr(current, column, data[column])
                    current.version += 1
                    current.updated_at = now
                    session.add(current)
                    events.facility_changed(session, settings, "updated", facility_message(current))
                    self.updated += 1

    def summary(self) -> pb.ImportFacilitiesResponse:
        return pb.ImportFacilitiesResponse(
            rows_received=self.received,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            rejected=self.rejected,
            errors=self.errors,
        )
