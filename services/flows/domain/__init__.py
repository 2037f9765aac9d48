"""Pure domain logic of the flows service: battery identity, the EPCIS-shaped flow event, its hash, the
custody state machine and the compliance rules (no database, gRPC, NATS or asyncio).

Modules:
- :mod:`.identity` — battery identifiers (manufacturer serial, GB/T 34014-2017, platform codes) and their URNs;
- :mod:`.events` — the flow event (GS1 EPCIS 2.0 / CBV 2.0 shape) and its field validation;
- :mod:`.event_hash` — the CBV 2.0-style event hash and DUPLICATE / CONFLICT classification;
- :mod:`.directory` — the participant and facility lookups the rules need (backed by the registry directory);
- :mod:`.hits` — rule hits, severities and decisions;
- :mod:`.custody` — the per-battery custody state machine and the replay of an event stream;
- :mod:`.rules` — the compliance rules;
- :mod:`.public` — the public, credential-free status of a battery.
"""

from services.flows.domain.custody import (
    ALLOWED_FROM,
    TRANSITION_TABLE,
    BatteryState,
    CustodyState,
    Judge,
    QuarantineCause,
    QuarantineRelease,
    Replay,
    TrailStep,
    advance,
    needs_replay,
    replay,
)
from services.flows.domain.directory import (
    Directory,
    FacilityInfo,
    FacilityKind,
    ParticipantInfo,
    Role,
    StaticDirectory,
)
from services.flows.domain.event_hash import (
    Resubmission,
    classify_resubmission,
    event_hash,
    pre_hash,
    resubmission_key,
)
from services.flows.domain.events import (
    BizStep,
    BizTransaction,
    CollectionMode,
    Disposition,
    ErrorDeclaration,
    ErrorReason,
    FlowEvent,
    HealthAssessment,
    HealthVerdict,
    Measurement,
    MeasurementType,
    Quantity,
    ScrapReason,
    Unit,
    declare_error,
    event_violations,
    scrap_conditions,
)
from services.flows.domain.hits import Decision, RuleHit, Severity, decide
from services.flows.domain.identity import (
    BatteryId,
    IdentifierScheme,
    IdentityReason,
    IdentityResult,
    InvalidBatteryId,
    issue_platform_code,
    parse_battery_id,
    parse_urn,
    validate_battery_id,
)
from services.flows.domain.rules import (
    RULES,
    RULES_BY_ID,
    Rule,
    RuleConfig,
    RuleContext,
    evaluate_all,
    make_judge,
    match_shipment,
)

__all__ = [
    "ALLOWED_FROM",
    "RULES",
    "RULES_BY_ID",
    "TRANSITION_TABLE",
    "BatteryId",
    "BatteryState",
    "BizStep",
    "BizTransaction",
    "CollectionMode",
    "CustodyState",
    "Decision",
    "Directory",
    "Disposition",
    "ErrorDeclaration",
    "ErrorReason",
    "FacilityInfo",
    "FacilityKind",
    "FlowEvent",
    "HealthAssessment",
    "HealthVerdict",
    "IdentifierScheme",
    "IdentityReason",
    "IdentityResult",
    "InvalidBatteryId",
    "Judge",
    "Measurement",
    "MeasurementType",
    "ParticipantInfo",
    "Quantity",
    "QuarantineCause",
    "QuarantineRelease",
    "Replay",
    "Resubmission",
    "Role",
    "Rule",
    "RuleConfig",
    "RuleContext",
    "RuleHit",
    "ScrapReason",
    "Severity",
    "StaticDirectory",
    "TrailStep",
    "Unit",
    "advance",
    "classify_resubmission",
    "decide",
    "declare_error",
    "evaluate_all",
    "event_hash",
    "event_violations",
    "issue_platform_code",
    "make_judge",
    "match_shipment",
    "needs_replay",
    "parse_battery_id",
    "parse_urn",
    "pre_hash",
    "replay",
    "resubmission_key",
    "scrap_conditions",
    "validate_battery_id",
]
