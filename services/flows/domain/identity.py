"""Battery identity: ``(scheme, namespace, value)``, validated per scheme, with one canonical URN per battery.

Research note §0.5 and §6.3: no national code is mandated for e-bike packs (GB 43854-2024 only requires a
unique code on heat-resistant marking), so the platform accepts three schemes (the ones of ``flows.proto``):

- ``MANUFACTURER_SERIAL`` — the producer's own serial; the namespace is the producer's unified social credit
  code (GB 32100-2015), checked fully with the registry's :func:`validate_credit_code`. The serial is 1-64
  printable ASCII characters. It is upper-cased: printed codes are read by scanners, OCR and keyboards, and a
  lower-case variant of a printed code is the same battery, so case must not create a second identity.
- ``GBT34014`` — the 24-character traction-battery code of GB/T 34014-2017 (note §3.2), namespace empty.
  **Structure only:** no source describes a check character, so none is verified (note §3.2: "No check
  character is described in any source. Validate by structure plus registry lookup only"). The per-position
  alphabets for product type, battery type and the date code follow the note's secondary sources; the note
  flags them for verification against the normative tables, so :func:`validate_battery_id` can skip the
  date-code check (``check_date_code=False``).
- ``PLATFORM`` — issued by the platform at intake to a battery with no readable code (note §5.3.2),
  namespace empty. Our own format (see :func:`issue_platform_code`).

Canonical form (storage keys, event hashes): ``urn:greenmesh:battery:<scheme>:...``, see :meth:`BatteryId.urn`.
Normalisation everywhere: NFKC (full-width characters typed with a Chinese IME become ASCII), surrounding
whitespace stripped, upper-cased.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import secrets
import unicodedata
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from meshkit.errors import FieldViolation
from meshkit.provinces import MAINLAND_PROVINCES, PROVINCES
from services.registry.domain.credit_code import normalise_credit_code, validate_credit_code


class IdentifierScheme(StrEnum):
    """Identifier schemes (``flows.proto`` ``IdentifierScheme``; research note §6.3)."""

    MANUFACTURER_SERIAL = "MANUFACTURER_SERIAL"
    GBT34014 = "GBT34014"
    PLATFORM = "PLATFORM"


URN_PREFIX: Final = "urn:greenmesh:battery:"
_URN_TOKEN: Final[dict[IdentifierScheme, str]] = {
    IdentifierScheme.MANUFACTURER_SERIAL: "mfr",
    IdentifierScheme.GBT34014: "gbt34014",
    IdentifierScheme.PLATFORM: "platform",
}
_TOKEN_SCHEME: Final = {token: scheme for scheme, token in _URN_TOKEN.items()}
_URN_SAFE: Final = "-._"  # besides A-Z a-z 0-9 (urllib's always-safe set); everything else is %-encoded


@dataclass(frozen=True, slots=True, order=True)
class BatteryId:
    """One battery identifier. Build it with :func:`parse_battery_id` (normalised and validated) or, in trusted
    paths such as reading the store, directly."""

    scheme: IdentifierScheme
    namespace: str
    value: str

    @property
    def urn(self) -> str:
        """``urn:greenmesh:battery:mfr:<credit code>:<serial>``, ``…:gbt34014:<code>``, ``…:platform:<code>``.

        The serial is percent-encoded outside ``A-Z a-z 0-9 - . _`` so that ``:`` separates the parts
        unambiguously and the URN is RFC 8141 clean.
        """
        return _urn(self.scheme, self.namespace, self.value)

    def __str__(self) -> str:
        return self.urn


@functools.lru_cache(maxsize=16384)
def _urn(scheme: IdentifierScheme, namespace: str, value: str) -> str:
    # Asked for many times per battery during a capture (state keys, links, rows): quote once.
    token = _URN_TOKEN[scheme]
    quoted = urllib.parse.quote(value, safe=_URN_SAFE)
    if scheme is IdentifierScheme.MANUFACTURER_SERIAL:
        return f"{URN_PREFIX}{token}:{namespace}:{quoted}"
    return f"{URN_PREFIX}{token}:{quoted}"


def parse_urn(urn: str) -> BatteryId:
    """The inverse of :attr:`BatteryId.urn` (not validated; pass the parts to :func:`parse_battery_id` for that).

    Raises ValueError for anything that is not a GreenMesh battery URN.
    """
    if not urn.startswith(URN_PREFIX):
        raise ValueError(f"not a battery URN (expected the prefix {URN_PREFIX!r}): {urn!r}")
    token, _, rest = urn[len(URN_PREFIX) :].partition(":")
    scheme = _TOKEN_SCHEME.get(token)
    if scheme is None or not rest:
        raise ValueError(f"unknown battery URN scheme {token!r} in {urn!r}")
    if scheme is IdentifierScheme.MANUFACTURER_SERIAL:
        namespace, sep, value = rest.partition(":")
        if not sep or not namespace or not value:
            raise ValueError(f"a manufacturer-serial URN is …:mfr:<credit code>:<serial>, got {urn!r}")
        return BatteryId(scheme, namespace, urllib.parse.unquote(value))
    return BatteryId(scheme, "", urllib.parse.unquote(rest))


# ---- validation results -------------------------------------------------------------------------


class IdentityReason(StrEnum):
    """Which identity check failed."""

    SCHEME = "scheme"
    NAMESPACE_REQUIRED = "namespace_required"
    NAMESPACE_NOT_ALLOWED = "namespace_not_allowed"
    NAMESPACE_CREDIT_CODE = "namespace_credit_code"
    LENGTH = "length"
    ALPHABET = "alphabet"
    PRODUCT_TYPE = "product_type"
    BATTERY_TYPE = "battery_type"
    DATE_CODE = "date_code"
    PREFIX = "prefix"
    PROVINCE = "province"
    CHECK_CHARACTER = "check_character"


@dataclass(frozen=True, slots=True)
class IdentityViolation:
    """One failed check; ``position`` is 1-based within the value (None when the whole value is at fault)."""

    reason: IdentityReason
    message: str
    position: int | None = None


@dataclass(frozen=True, slots=True)
class IdentityResult:
    """Outcome of :func:`validate_battery_id`; ``battery_id`` holds the normalised parts even when invalid."""

    battery_id: BatteryId
    violations: tuple[IdentityViolation, ...]

    @property
    def valid(self) -> bool:
        return not self.violations

    @property
    def reasons(self) -> tuple[IdentityReason, ...]:
        return tuple(v.reason for v in self.violations)


class InvalidBatteryId(ValueError):
    """Raised by :func:`parse_battery_id`; carries the failed checks."""

    def __init__(self, violations: tuple[IdentityViolation, ...]) -> None:
        super().__init__("; ".join(v.message for v in violations))
        self.violations = violations


def normalise_code(raw: str) -> str:
    """NFKC-normalise, strip surrounding whitespace (incl. U+3000) and upper-case."""
    return unicodedata.normalize("NFKC", raw).strip().upper()


def validate_battery_id(
    scheme: IdentifierScheme | str, namespace: str, value: str, *, check_date_code: bool = True
) -> IdentityResult:
    """Normalise and validate one identifier; every applicable check runs and is reported."""
    try:
        kind = IdentifierScheme(scheme)
    except ValueError:
        bad = BatteryId(IdentifierScheme.PLATFORM, namespace, value)
        message = f"unknown identifier scheme {scheme!r}; expected one of {', '.join(IdentifierScheme)}"
        return IdentityResult(bad, (IdentityViolation(IdentityReason.SCHEME, message),))
    if kind is IdentifierScheme.MANUFACTURER_SERIAL:
        ns, code = normalise_credit_code(namespace), normalise_code(value)
        found = _namespace_violations(ns) + _serial_violations(code)
    elif kind is IdentifierScheme.GBT34014:
        ns, code = normalise_code(namespace), normalise_code(value)
        found = ([_no_namespace(kind)] if ns else []) + gbt34014_violations(code, check_date_code=check_date_code)
    else:
        ns, code = normalise_code(namespace), normalise_platform_code(value)
        found = ([_no_namespace(kind)] if ns else []) + platform_code_violations(code)
    return IdentityResult(BatteryId(kind, ns, code), tuple(found))


def parse_battery_id(
    scheme: IdentifierScheme | str, namespace: str, value: str, *, check_date_code: bool = True
) -> BatteryId:
    """The normalised :class:`BatteryId`, or :class:`InvalidBatteryId` naming every failed check."""
    result = validate_battery_id(scheme, namespace, value, check_date_code=check_date_code)
    if not result.valid:
        raise InvalidBatteryId(result.violations)
    return result.battery_id


def battery_id_violations(field: str, battery: BatteryId, *, check_date_code: bool = True) -> list[FieldViolation]:
    """Field violations for a :class:`BatteryId` as received (it must already be in normalised form)."""
    result = validate_battery_id(battery.scheme, battery.namespace, battery.value, check_date_code=check_date_code)
    found = [FieldViolation(field, f"{v.reason.value}: {v.message}") for v in result.violations]
    if result.valid and result.battery_id != battery:
        found.append(FieldViolation(field, f"not in normalised form; expected {result.battery_id.urn}"))
    return found


def _no_namespace(kind: IdentifierScheme) -> IdentityViolation:
    return IdentityViolation(IdentityReason.NAMESPACE_NOT_ALLOWED, f"the {kind.value} scheme has no namespace")


# ---- MANUFACTURER_SERIAL --------------------------------------------------------------------------

SERIAL_MAX: Final = 64


def _namespace_violations(namespace: str) -> list[IdentityViolation]:
    return list(_namespace_violations_cached(namespace))


@functools.lru_cache(maxsize=4096)
def _namespace_violations_cached(namespace: str) -> tuple[IdentityViolation, ...]:
    # A report names the same few producers' codes thousands of times: check each code once.
    return tuple(_check_namespace(namespace))


def _check_namespace(namespace: str) -> list[IdentityViolation]:
    if not namespace:
        return [
            IdentityViolation(
                IdentityReason.NAMESPACE_REQUIRED,
                "a manufacturer serial needs the producer's unified social credit code as namespace",
            )
        ]
    result = validate_credit_code(namespace)
    return [
        IdentityViolation(IdentityReason.NAMESPACE_CREDIT_CODE, f"namespace: {v.message}", v.position)
        for v in result.violations
    ]


def _serial_violations(serial: str) -> list[IdentityViolation]:
    if not 1 <= len(serial) <= SERIAL_MAX:
        return [
            IdentityViolation(IdentityReason.LENGTH, f"a serial has 1 to {SERIAL_MAX} characters, got {len(serial)}")
        ]
    return [
        IdentityViolation(IdentityReason.ALPHABET, f"position {i}: {c!r} is not printable ASCII without spaces", i)
        for i, c in enumerate(serial, start=1)
        if not "!" <= c <= "~"
    ]


# ---- GB/T 34014-2017 ------------------------------------------------------------------------------

GBT34014_LENGTH: Final = 24
GBT34014_ALPHABET: Final = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
PRODUCT_TYPES: Final = {"P": "pack 电池包", "M": "module 模组", "C": "cell 单体"}
"""X4 (note §3.2)."""
BATTERY_TYPES: Final = frozenset("ABCDEFGZ")
"""X5: A-G defined (e.g. B LFP, E ternary), Z other (note §3.2)."""
YEAR_CODES: Final = "123456789ABCDEFGHJKLMNPRSTVWXY"
"""X15, 2011 + index: the note's source gives 7, 8, 9, A… for 2017, 2018, 2019, 2020 (and F = 2025); the
continuation skips I, O, Q, U, Z like the VIN year code. **Unverified** against the normative table."""
MONTH_CODES: Final = "123456789ABC"
"""X16, January..December (note §3.2)."""
DAY_CODES: Final = "0123456789ABCDEFGHJKLMNPRSTVWXY"
"""X17: 1-9, then A..Y without I, O, Q, U, Z for 10..30, and 0 for 31, as in the note's test-data source
(``day_option[day % 31]``). **Unverified** against the normative table."""


@dataclass(frozen=True, slots=True)
class Gbt34014Fields:
    """The seven fields of a GB/T 34014 code (note §3.2 table)."""

    manufacturer_code: str  # X1-X3, 厂商代码 (CMC filing)
    product_type: str  # X4
    battery_type: str  # X5
    spec_code: str  # X6-X7, 规格代码
    traceability_code: str  # X8-X14, 追溯信息代码
    date_code: str  # X15-X17, 生产日期代码
    serial: str  # X18-X24, 序列号

    @property
    def production_date(self) -> dt.date | None:
        """The decoded X15-X17 date, or None when the code is outside the (unverified) alphabets or not a
        calendar date. Informational: no rule relies on it (see the module docstring)."""
        y, m, d = self.date_code[0], self.date_code[1], self.date_code[2]
        if y not in YEAR_CODES or m not in MONTH_CODES or d not in DAY_CODES:
            return None
        day = DAY_CODES.index(d) or 31
        try:
            return dt.date(2011 + YEAR_CODES.index(y), MONTH_CODES.index(m) + 1, day)
        except ValueError:
            return None


def split_gbt34014(code: str) -> Gbt34014Fields:
    """Split a 24-character code into its fields (no validation beyond the length)."""
    if len(code) != GBT34014_LENGTH:
        raise ValueError(f"a GB/T 34014 code has {GBT34014_LENGTH} characters, got {len(code)}")
    return Gbt34014Fields(code[0:3], code[3], code[4], code[5:7], code[7:14], code[14:17], code[17:24])


def gbt34014_violations(code: str, *, check_date_code: bool = True) -> list[IdentityViolation]:
    """Structural checks of a normalised GB/T 34014-2017 code: length, alphabet (0-9, A-Z), X4 product type,
    X5 battery type and, unless disabled, the X15-X17 date code. There is no check character to verify."""
    if len(code) != GBT34014_LENGTH:
        return [
            IdentityViolation(
                IdentityReason.LENGTH, f"a GB/T 34014 code has {GBT34014_LENGTH} characters, got {len(code)}"
            )
        ]
    bad = [(i, c) for i, c in enumerate(code, start=1) if c not in GBT34014_ALPHABET]
    if bad:
        return [IdentityViolation(IdentityReason.ALPHABET, f"position {i}: {c!r} is not 0-9 or A-Z", i) for i, c in bad]
    fields = split_gbt34014(code)
    found: list[IdentityViolation] = []
    if fields.product_type not in PRODUCT_TYPES:
        found.append(
            IdentityViolation(
                IdentityReason.PRODUCT_TYPE,
                f"position 4: product type {fields.product_type!r} is not P (pack), M (module) or C (cell)",
                4,
            )
        )
    if fields.battery_type not in BATTERY_TYPES:
        found.append(
            IdentityViolation(
                IdentityReason.BATTERY_TYPE,
                f"position 5: battery type {fields.battery_type!r} is not one of A-G or Z",
                5,
            )
        )
    if check_date_code:
        found += _date_code_violations(fields)
    return found


def _date_code_violations(fields: Gbt34014Fields) -> list[IdentityViolation]:
    y, m, d = fields.date_code[0], fields.date_code[1], fields.date_code[2]
    found: list[IdentityViolation] = []
    for position, char, alphabet, what in (
        (15, y, YEAR_CODES, "year"),
        (16, m, MONTH_CODES, "month"),
        (17, d, DAY_CODES, "day"),
    ):
        if char not in alphabet:
            found.append(
                IdentityViolation(
                    IdentityReason.DATE_CODE,
                    f"position {position}: {char!r} is not a {what} code (one of {alphabet})",
                    position,
                )
            )
    if not found and fields.production_date is None:
        found.append(
            IdentityViolation(
                IdentityReason.DATE_CODE, f"positions 15-17: {fields.date_code!r} is not a calendar date", 15
            )
        )
    return found


# ---- PLATFORM codes -------------------------------------------------------------------------------

PLATFORM_PREFIX: Final = "GM"
PLATFORM_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""Crockford Base32 (no I, L, O, U): unambiguous when read aloud or written by hand at an outlet."""
PLATFORM_BODY: Final = 12
PLATFORM_LENGTH: Final = len(PLATFORM_PREFIX) + 2 + PLATFORM_BODY + 1
_PLATFORM_VALUE: Final = {c: i for i, c in enumerate(PLATFORM_ALPHABET)}
_CROCKFORD_ALIASES: Final = str.maketrans({"I": "1", "L": "1", "O": "0"})


def normalise_platform_code(raw: str) -> str:
    """Upper-case, drop ``-`` and spaces used for grouping, and map Crockford's look-alikes (I, L → 1; O → 0)
    after the ``GM`` prefix."""
    code = normalise_code(raw).replace("-", "").replace(" ", "")
    if code.startswith(PLATFORM_PREFIX):
        return PLATFORM_PREFIX + code[len(PLATFORM_PREFIX) :].translate(_CROCKFORD_ALIASES)
    return code


def platform_check_character(payload: str) -> str:
    """Luhn mod 32 (the Luhn mod N algorithm over the Crockford alphabet) of everything before the check
    character, ``GM`` and the province included. It detects every single-character substitution and every
    transposition of two adjacent characters except those whose values sum to 31 (a residual Luhn blind spot)."""
    total = 0
    factor = 2
    for char in reversed(payload):
        try:
            addend = factor * _PLATFORM_VALUE[char]
        except KeyError:
            raise ValueError(f"{char!r} is not in the platform code alphabet") from None
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return PLATFORM_ALPHABET[(32 - total % 32) % 32]


def platform_code_violations(code: str) -> list[IdentityViolation]:
    """``GM`` + a GB/T 2260 province code (2 digits) + 12 Crockford Base32 characters + a Luhn mod 32 check
    character: 17 characters, e.g. ``GM32`` ``0J5M8Q2R7T4V`` ``X``."""
    if len(code) != PLATFORM_LENGTH:
        return [
            IdentityViolation(
                IdentityReason.LENGTH, f"a platform code has {PLATFORM_LENGTH} characters, got {len(code)}"
            )
        ]
    if not code.startswith(PLATFORM_PREFIX):
        return [IdentityViolation(IdentityReason.PREFIX, f"a platform code starts with {PLATFORM_PREFIX!r}", 1)]
    found: list[IdentityViolation] = []
    province = code[2:4]
    if province not in PROVINCES:
        found.append(
            IdentityViolation(IdentityReason.PROVINCE, f"positions 3-4: {province!r} is not a GB/T 2260 province", 3)
        )
    bad = [(i, c) for i, c in enumerate(code[4:], start=5) if c not in _PLATFORM_VALUE]
    found += [
        IdentityViolation(IdentityReason.ALPHABET, f"position {i}: {c!r} is not a Crockford Base32 character", i)
        for i, c in bad
    ]
    if not bad and province.isdigit():
        expected = platform_check_character(code[:-1])
        if code[-1] != expected:
            found.append(
                IdentityViolation(
                    IdentityReason.CHECK_CHARACTER,
                    f"position {PLATFORM_LENGTH}: expected check character {expected!r}, got {code[-1]!r}",
                    PLATFORM_LENGTH,
                )
            )
    return found


def issue_platform_code(province: str, *, rng: random.Random | None = None) -> BatteryId:
    """A new PLATFORM identifier for ``province`` (60 random bits from :mod:`secrets`, or from ``rng`` in tests).

    Random rather than sequential so that codes reveal nothing about volumes. The store must still hold
    identifiers unique and draw again on a collision (with a million codes issued, about 1 in 10^12 per draw).
    """
    if province not in MAINLAND_PROVINCES:
        raise ValueError(f"{province!r} is not a GB/T 2260 mainland province code")
    bits = rng.getrandbits(5 * PLATFORM_BODY) if rng is not None else secrets.randbits(5 * PLATFORM_BODY)
    body = "".join(PLATFORM_ALPHABET[(bits >> (5 * i)) & 31] for i in reversed(range(PLATFORM_BODY)))
    payload = PLATFORM_PREFIX + province + body
    return BatteryId(IdentifierScheme.PLATFORM, "", payload + platform_check_character(payload))
