"""A deterministic event hash in the manner of the CBV 2.0 event hash ID (research note §1.3), and the
DUPLICATE / CONFLICT decision it makes possible.

What follows the reference algorithm (``RalphTro/epcis-event-hash-generator``, note §1.3):

1. the pre-hash starts with ``eventType=…`` (ObjectEvent, or TransformationEvent for dismantling and recycling);
2. the EPCIS fields follow in the reference's fixed order (``PROP_ORDER``): ``eventTime``,
   ``eventTimeZoneOffset``, ``epcList`` / ``inputEPCList``, ``quantityList`` / ``inputQuantityList``,
   ``outputQuantityList``, ``action``, ``bizStep``, ``disposition``, ``readPoint``, ``bizLocation``,
   ``bizTransactionList``, ``sourceList``, ``destinationList``, ``sensorElementList``; omitted fields add nothing;
3. the children of a repeated element are sorted lexically (so list order never matters);
4. values are canonical: times in UTC with millisecond precision and a ``Z`` (truncated, as the reference's
   ``isoformat(timespec="milliseconds")``), numbers without trailing zeros or a leading ``+`` (``1.0`` → ``1``),
   CBV terms as GS1 web-vocabulary URIs (``https://ref.gs1.org/cbv/BizStep-shipping``);
5. everything else (the platform's extensions and the ``errorDeclaration``) follows as one sorted list of
   ``{namespace}name=value`` lines; ``eventID`` and ``recordTime`` are excluded, ``errorDeclaration`` is not,
   so a declaration hashes differently from the event it declares (gs1/EPCIS #226);
6. the result is the RFC 6920 ``ni`` URI ``ni:///sha-256;<lower-case hex>?ver=CBV2.0``.

Where this deviates, on purpose:

- **Vocabulary.** CBV has no terms for health assessing, sorting, discharging or recycling, nor for the
  dispositions waste, in use, in storage, dismantled and recycled (note §1.1 "Vocabulary gaps"). Those become
  platform URIs under :data:`VOCAB` (``https://vocab.greenmesh.io/BizStep-recycling``), never bare tokens (which
  JSON-LD would silently drop, note §1.1). Battery identifiers are GreenMesh URNs, not GS1 Digital Link, and
  facilities and participants are ``urn:greenmesh:facility:<id>`` / ``urn:greenmesh:participant:<id>``.
  So the same physical event hashes differently here than in a GS1 repository: the hash is for our
  idempotency, not for cross-repository matching.
- **Separators.** The reference concatenates ``name=value`` strings with no separator (``JOIN_BY=""``), which is
  ambiguous when a value can contain another field's name (the class of bug in the reference's issue tracker,
  note §1.3). Here every line is a full path (``sourceList.source=…``) ending in ``\\n``, the parts of an element
  are ``;``-separated ``key=value`` pairs, and every free-text value is percent-encoded (RFC 3986), so no value
  can contain ``\\n``, ``;`` or ``=`` and two different events cannot share a pre-hash.
- **Measurements** are reduced to ``sensorReport`` type, value and unit (no device metadata).

The ``?ver=CBV2.0`` suffix is kept because the layout and canonicalisation follow CBV 2.0 (and ``flows.proto``
documents that form); a consumer must not expect it to equal a GS1 hash of an exported event.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import urllib.parse
from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum
from typing import Final

from services.flows.domain.events import (
    MEASUREMENT_UOM,
    TRANSFORMATION_STEPS,
    BizStep,
    BizTransactionType,
    Disposition,
    FlowEvent,
    Quantity,
)

CBV: Final = "https://ref.gs1.org/cbv/"
VOCAB: Final = "https://vocab.greenmesh.io/"
"""The platform's vocabulary namespace (note §6 conventions: custom terms under a platform namespace)."""
HASH_VERSION: Final = "CBV2.0"

BIZ_STEP_URI: Final[dict[BizStep, str]] = {
    BizStep.COMMISSIONING: CBV + "BizStep-commissioning",
    BizStep.SHIPPING: CBV + "BizStep-shipping",
    BizStep.RECEIVING: CBV + "BizStep-receiving",
    BizStep.RETAIL_SELLING: CBV + "BizStep-retail_selling",
    BizStep.INSTALLING: CBV + "BizStep-installing",
    BizStep.COLLECTING: CBV + "BizStep-collecting",
    BizStep.STORING: CBV + "BizStep-storing",
    BizStep.DISMANTLING: CBV + "BizStep-disassembling",
    BizStep.DESTROYING: CBV + "BizStep-destroying",
    # not in CBV 2.0 (note §1.1, §6.4): platform terms
    BizStep.HEALTH_ASSESSING: VOCAB + "BizStep-health_assessing",
    BizStep.SORTING: VOCAB + "BizStep-sorting",
    BizStep.DISCHARGING: VOCAB + "BizStep-discharging",
    BizStep.RECYCLING: VOCAB + "BizStep-recycling",
}
"""The hashed (and exported) URI of each step: CBV where CBV has the same step, else the platform's. For a
lossy export to plain CBV, HEALTH_ASSESSING and SORTING map to ``inspecting`` and RECYCLING to
``oec:BizStep-recovery`` (note §6.4); that mapping is not used here, because two steps sharing one URI would
hash alike."""

DISPOSITION_URI: Final[dict[Disposition, str]] = {
    Disposition.ACTIVE: CBV + "Disp-active",
    Disposition.IN_TRANSIT: CBV + "Disp-in_transit",
    Disposition.SELLABLE: CBV + "Disp-sellable_accessible",
    Disposition.RETAIL_SOLD: CBV + "Disp-retail_sold",
    Disposition.RETURNED: CBV + "Disp-returned",
    Disposition.DAMAGED: CBV + "Disp-damaged",
    Disposition.NON_CONFORMANT: CBV + "Disp-non_conformant",
    Disposition.RECALLED: CBV + "Disp-recalled",
    Disposition.STOLEN: CBV + "Disp-stolen",
    Disposition.DESTROYED: CBV + "Disp-destroyed",
    Disposition.IN_USE: VOCAB + "Disp-in_use",
    Disposition.WASTE: VOCAB + "Disp-waste",
    Disposition.IN_STORAGE: VOCAB + "Disp-in_storage",
    Disposition.DISMANTLED: VOCAB + "Disp-dismantled",
    Disposition.RECYCLED: VOCAB + "Disp-recycled",
}

_CBV_TRANSACTION_TYPES: Final = frozenset(
    {BizTransactionType.PO, BizTransactionType.INV, BizTransactionType.DESADV, BizTransactionType.RECADV, "BOL"}
)


def transaction_type_uri(transaction_type: str) -> str:
    """CBV ``BTT-po`` … for CBV's types, a platform URI for the others (``TRANSFER_MANIFEST``)."""
    if transaction_type in _CBV_TRANSACTION_TYPES:
        return f"{CBV}BTT-{transaction_type.lower()}"
    return f"{VOCAB}BTT-{_enc(transaction_type)}"


def event_type(step: BizStep) -> str:
    return "TransformationEvent" if step in TRANSFORMATION_STEPS else "ObjectEvent"


def action(step: BizStep) -> str:
    """EPCIS action: ADD when the battery comes into being, DELETE when it is destroyed, OBSERVE otherwise."""
    if step is BizStep.COMMISSIONING:
        return "ADD"
    if step is BizStep.DESTROYING:
        return "DELETE"
    return "OBSERVE"


@functools.lru_cache(maxsize=4096)  # a few hundred sites and participants recur in every batch
def facility_uri(facility_id: str) -> str:
    return f"urn:greenmesh:facility:{_enc(facility_id)}"


@functools.lru_cache(maxsize=4096)
def participant_uri(participant_id: str) -> str:
    return f"urn:greenmesh:participant:{_enc(participant_id)}"


def canonical_time(moment: dt.datetime) -> str:
    """UTC, millisecond precision (truncated), ``Z``: ``2025-03-01T02:00:00.123Z``."""
    utc = moment.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def canonical_number(value: float) -> str:
    """Shortest decimal without exponent, trailing zeros or ``+``: 1.0 → ``1``, 2.50 → ``2.5``, -0.0 → ``0``."""
    if value == 0:
        return "0"
    return format(Decimal(repr(float(value))).normalize(), "f")


def canonical_offset(offset: str) -> str:
    return "+00:00" if offset == "-00:00" else offset


def _enc(text: str) -> str:
    """Percent-encode free text (RFC 3986 unreserved and ``:/`` kept), so values never contain ``\\n ; =``."""
    return urllib.parse.quote(text.strip(), safe=":/-._~")


def _element(**parts: str) -> str:
    return ";".join(f"{key}={value}" for key, value in parts.items())


def _quantities(path: str, quantities: Iterable[Quantity]) -> list[str]:
    return sorted(
        f"{path}.quantityElement="
        + _element(epcClass=_enc(q.product_class), quantity=canonical_number(q.amount), uom=q.unit.value)
        for q in quantities
    )


def pre_hash(event: FlowEvent) -> str:
    """The canonical pre-hash string (ASCII, one ``name=value`` line per field, see the module docstring)."""
    step = event.biz_step
    transformation = step in TRANSFORMATION_STEPS
    lines = [
        f"eventType={event_type(step)}",
        f"eventTime={canonical_time(event.event_time)}",
        f"eventTimeZoneOffset={canonical_offset(event.event_time_zone_offset)}",
    ]
    epc_list = "inputEPCList" if transformation else "epcList"
    lines += sorted(f"{epc_list}.epc={battery.urn}" for battery in event.batteries)
    lines += _quantities("inputQuantityList" if transformation else "quantityList", event.quantities)
    lines += _quantities("outputQuantityList", event.outputs)
    if not transformation:
        lines.append(f"action={action(step)}")
    lines.append(f"bizStep={BIZ_STEP_URI[step]}")
    if event.disposition is not None:
        lines.append(f"disposition={DISPOSITION_URI[event.disposition]}")
    lines.append(f"readPoint.id={facility_uri(event.facility_id)}")
    if step is not BizStep.SHIPPING:  # a shipped object's location afterwards is unknown (in transit)
        lines.append(f"bizLocation.id={facility_uri(event.facility_id)}")
    lines += sorted(
        "bizTransactionList.bizTransaction="
        + _element(type=transaction_type_uri(t.transaction_type), bizTransaction=_enc(t.transaction_id))
        for t in event.business_transactions
    )
    for side in ("source", "destination"):
        facility, owner = getattr(event, f"{side}_facility_id"), getattr(event, f"{side}_owner_id")
        parties = [(f"{CBV}SDT-location", facility_uri(facility))] if facility else []
        parties += [(f"{CBV}SDT-owning_party", participant_uri(owner))] if owner else []
        lines += sorted(f"{side}List.{side}=" + _element(type=kind, **{side: ref}) for kind, ref in parties)
    assessment = event.health_assessment
    if assessment is not None:
        lines += sorted(
            "sensorElementList.sensorElement.sensorReport="
            + _element(
                type=f"{VOCAB}MT-{m.measurement_type.value}",
                value=canonical_number(m.value),
                uom=MEASUREMENT_UOM[m.measurement_type],
            )
            for m in assessment.measurements
        )
    lines += sorted(_extension_lines(event))
    return "".join(f"{line}\n" for line in lines)


def _extension_lines(event: FlowEvent) -> list[str]:
    ns = "{" + VOCAB + "}"
    found = [f"{ns}reporter={participant_uri(event.reporter_id)}"]
    if event.collection_mode is not None:
        found.append(f"{ns}collectionMode={event.collection_mode.value}")
    if event.model_id:
        found.append(f"{ns}modelId={_enc(event.model_id)}")
    if event.production_date is not None:
        found.append(f"{ns}productionDate={event.production_date.isoformat()}")
    if event.health_assessment is not None:
        found.append(f"{ns}healthVerdict={event.health_assessment.verdict.value}")
        found += [f"{ns}scrapReason={reason.value}" for reason in event.health_assessment.reasons]
    declaration = event.error_declaration
    if declaration is not None:
        found.append(f"errorDeclaration.declarationTime={canonical_time(declaration.declaration_time)}")
        found.append(f"errorDeclaration.reason={CBV}ER-{declaration.reason.value.lower()}")
        found += [
            f"errorDeclaration.correctiveEventIDs.correctiveEventID=urn:uuid:{_enc(i)}"
            for i in declaration.corrective_event_ids
        ]
        if declaration.explanation.strip():
            found.append(f"errorDeclaration.{ns}explanation={_enc(declaration.explanation)}")
        if declaration.declared_by:
            found.append(f"errorDeclaration.{ns}declaredBy={participant_uri(declaration.declared_by)}")
    return found


def event_hash(event: FlowEvent) -> str:
    """``ni:///sha-256;<hex>?ver=CBV2.0`` of :func:`pre_hash` (RFC 6920)."""
    digest = hashlib.sha256(pre_hash(event).encode("ascii")).hexdigest()
    return f"ni:///sha-256;{digest}?ver={HASH_VERSION}"


# ---- idempotency ----------------------------------------------------------------------------------


class Resubmission(StrEnum):
    """What a write of an event id already seen means (note §0.3; ``flows.proto`` ``EventOutcome``)."""

    NEW = "NEW"  # no stored event under this key
    DUPLICATE = "DUPLICATE"  # same id, same content: a no-op, answer with the stored result
    CONFLICT = "CONFLICT"  # same id, other content: refused, the stored event stands


def classify_resubmission(stored_hash: str | None, new_hash: str) -> Resubmission:
    """Compare the stored hash under the event's :func:`resubmission_key` with the hash of the new write."""
    if stored_hash is None:
        return Resubmission.NEW
    return Resubmission.DUPLICATE if stored_hash == new_hash else Resubmission.CONFLICT


def resubmission_key(event: FlowEvent) -> str:
    """The idempotency key: the event id, and a separate key for its error declaration, which reuses the id
    (gs1/EPCIS #48: rejecting every reused id would make declarations impossible)."""
    return f"{event.event_id}#error-declaration" if event.error_declaration is not None else event.event_id
