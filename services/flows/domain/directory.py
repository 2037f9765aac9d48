"""What the flow rules need to know about participants and facilities, as an abstract lookup.

The service backs :class:`Directory` with the registry's JetStream key-value directory
(``GREENMESH_<province>_DIRECTORY``, entries ``participant.<id>`` and ``facility.<id>``; README "The
directory"). Facility types, accreditation statuses and roles are the registry proto enum names without their
prefixes (``FACILITY_TYPE_RECYCLING_PLANT`` → ``RECYCLING_PLANT``), so plain strings compare equal to the
:class:`FacilityKind` and :class:`Role` members below. :class:`StaticDirectory` is an in-memory implementation
for tests and for a snapshot the service loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol


class FacilityKind(StrEnum):
    """Facility types of ``greenmesh.registry.v1.FacilityType``."""

    RECYCLING_OUTLET = "RECYCLING_OUTLET"  # 回收服务网点
    COOP_STATION = "COOP_STATION"  # 供销合作社回收站点
    TEMP_STORAGE_POINT = "TEMP_STORAGE_POINT"  # 暂存点
    REGIONAL_SORTING_CENTER = "REGIONAL_SORTING_CENTER"  # 区域分拣中心
    DISMANTLING_BASE = "DISMANTLING_BASE"  # 拆解基地
    RECYCLING_PLANT = "RECYCLING_PLANT"  # 综合利用 (再生利用) 工厂
    DEALER_STORE = "DEALER_STORE"
    PRODUCTION_PLANT = "PRODUCTION_PLANT"
    DATA_CENTER = "DATA_CENTER"
    BASE_STATION = "BASE_STATION"


class Role(StrEnum):
    """Participant roles of ``greenmesh.registry.v1.ParticipantRole``."""

    BATTERY_PRODUCER = "BATTERY_PRODUCER"
    EBIKE_PRODUCER = "EBIKE_PRODUCER"
    IMPORTER = "IMPORTER"
    DEALER = "DEALER"
    REPAIR_SHOP = "REPAIR_SHOP"
    RENTAL_SWAP_OPERATOR = "RENTAL_SWAP_OPERATOR"
    RECYCLING_OUTLET_OPERATOR = "RECYCLING_OUTLET_OPERATOR"
    COOP_STATION_OPERATOR = "COOP_STATION_OPERATOR"
    TEMP_STORAGE_OPERATOR = "TEMP_STORAGE_OPERATOR"
    SORTING_CENTER_OPERATOR = "SORTING_CENTER_OPERATOR"
    LOGISTICS_PROVIDER = "LOGISTICS_PROVIDER"
    RECYCLING_ENTERPRISE = "RECYCLING_ENTERPRISE"
    TELECOM_OPERATOR = "TELECOM_OPERATOR"
    DATA_CENTER_OPERATOR = "DATA_CENTER_OPERATOR"
    REGULATOR = "REGULATOR"
    PLATFORM_OPERATOR = "PLATFORM_OPERATOR"


LISTED: Final = "LISTED"
"""The accreditation status of a facility on the regulator's list (名录内)."""

PRODUCER_ROLES: Final = frozenset({Role.BATTERY_PRODUCER, Role.EBIKE_PRODUCER, Role.IMPORTER})
"""Roles that may put batteries on the market (commission them) and own a manufacturer-serial namespace."""

MARKET_FACILITIES: Final = frozenset({FacilityKind.DEALER_STORE, FacilityKind.PRODUCTION_PLANT})
"""Where batteries are sold or fitted: a waste battery arriving here is going back to the market."""

TREATMENT_FACILITIES: Final = frozenset({FacilityKind.DISMANTLING_BASE, FacilityKind.RECYCLING_PLANT})
"""Comprehensive-utilisation sites (拆解 / 再生利用); their operator must hold RECYCLING_ENTERPRISE."""

REVERSE_CHAIN_FACILITIES: Final = frozenset(
    {
        FacilityKind.RECYCLING_OUTLET,
        FacilityKind.COOP_STATION,
        FacilityKind.TEMP_STORAGE_POINT,
        FacilityKind.REGIONAL_SORTING_CENTER,
        *TREATMENT_FACILITIES,
    }
)
"""Sites of the recycling network: what leaves them is waste (research note §3.4, §6.5)."""


@dataclass(frozen=True, slots=True)
class FacilityInfo:
    """A directory facility entry: type, accreditation, operator and county."""

    facility_id: str
    facility_type: str
    accreditation: str
    operator_id: str
    county_code: str = ""

    @property
    def listed(self) -> bool:
        return self.accreditation == LISTED


@dataclass(frozen=True, slots=True)
class ParticipantInfo:
    """A directory participant entry."""

    participant_id: str
    credit_code: str = ""
    roles: frozenset[str] = field(default_factory=frozenset)
    status: str = "ACTIVE"

    def has_any_role(self, roles: Iterable[str]) -> bool:
        return not self.roles.isdisjoint(roles)


class Directory(Protocol):
    """Read-only lookups the rules and the custody state machine use. Return None for an unknown id."""

    def facility(self, facility_id: str) -> FacilityInfo | None: ...

    def participant(self, participant_id: str) -> ParticipantInfo | None: ...

    def participant_by_credit_code(self, credit_code: str) -> ParticipantInfo | None: ...


@dataclass(frozen=True)
class StaticDirectory:
    """An immutable in-memory :class:`Directory`."""

    facilities: Mapping[str, FacilityInfo] = field(default_factory=dict)
    participants: Mapping[str, ParticipantInfo] = field(default_factory=dict)

    @classmethod
    def of(
        cls, facilities: Iterable[FacilityInfo] = (), participants: Iterable[ParticipantInfo] = ()
    ) -> StaticDirectory:
        return cls({f.facility_id: f for f in facilities}, {p.participant_id: p for p in participants})

    def facility(self, facility_id: str) -> FacilityInfo | None:
        return self.facilities.get(facility_id)

    def participant(self, participant_id: str) -> ParticipantInfo | None:
        return self.participants.get(participant_id)

    def participant_by_credit_code(self, credit_code: str) -> ParticipantInfo | None:
        return next((p for p in self.participants.values() if p.credit_code == credit_code), None)
