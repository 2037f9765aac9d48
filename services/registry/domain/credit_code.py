"""Unified social credit code (统一社会信用代码) validation, GB 32100-2015.

Layout of the 18 characters (GB 32100-2015 §4):

====== ==============================================================================
 pos    field
====== ==============================================================================
 1      registration-authority code (登记管理部门代码)
 2      organisation-type code (机构类别代码), defined per registration authority
 3-8    GB/T 2260 division code of the *registering authority* (登记管理机关行政区划码)
 9-17   subject identifier = GB 11714 organisation code (8 body characters + its own
        check character at position 17)
 18     check character
====== ==============================================================================

The alphabet is the 31 characters ``0-9`` and the upper-case letters without I, O, S, V
and Z; a character's value is its index in that alphabet (GB 32100-2015 Table 2). The
check character at position 18 is ``C18 = 31 - (sum(value(c_i) * W_i) mod 31)`` with
``W_i = 3**(i-1) mod 31`` for i = 1..17, and 31 mapped to 0 (GB 32100-2015 §5). Because 31
is prime and every weight is non-zero mod 31, any single substitution is detected; and since
``W_i != W_(i+1)`` (mod 31), so is any transposition of two adjacent, different characters.

The inner organisation-code check (GB 11714-1997 §6) uses its own alphabet (0-9, A=10 ..
Z=35), weights ``3, 7, 9, 10, 5, 8, 4, 2`` (``2**(9-j) mod 11``) and
``C9 = 11 - (sum mod 11)``, with 10 written ``X`` and 11 written ``0``.

Normalisation: before validation the input is NFKC-normalised (so full-width characters typed
with a Chinese IME, e.g. U+FF19 FULLWIDTH DIGIT NINE, become ASCII), stripped of surrounding whitespace
(including the ideographic space U+3000), and upper-cased. Whitespace inside the code is
not removed; it fails the alphabet check.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
"""The 31 characters of GB 32100-2015 Table 2, in value order (I, O, S, V, Z excluded)."""

FORBIDDEN_LETTERS: Final = frozenset("IOSVZ")
CODE_LENGTH: Final = 18

WEIGHTS: Final = tuple(pow(3, i, 31) for i in range(17))
"""Position weights 1..17: 1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28."""

ORG_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""GB 11714 character values: digits 0-9, then A=10 .. Z=35 (a different table from ALPHABET)."""

ORG_WEIGHTS: Final = tuple(pow(2, 8 - i, 11) for i in range(8))
"""GB 11714 weights for the 8 body characters: 3, 7, 9, 10, 5, 8, 4, 2."""

_VALUE: Final = {c: i for i, c in enumerate(ALPHABET)}
_ORG_VALUE: Final = {c: i for i, c in enumerate(ORG_ALPHABET)}

REGISTRATION_AUTHORITIES: Final[Mapping[str, str]] = {
    "1": "机构编制 (institutional establishment)",
    "2": "外交 (foreign affairs)",
    "3": "司法行政 (judicial administration)",
    "4": "文化 (culture)",
    "5": "民政 (civil affairs)",
    "6": "旅游 (tourism)",
    "7": "宗教 (religious affairs)",
    "8": "工会 (trade unions)",
    "9": "工商 (market regulation / industry and commerce)",
    "A": "中央军委改革和编制办公室 (CMC reform and establishment office)",
    "N": "农业 (agriculture)",
    "Y": "其他 (other)",
}
"""Position-1 codes. GB 32100-2015 Table 1 defines 1, 5, 9 and Y; the others were assigned to further
registration departments afterwards by the national credit-code data centre (全国组织机构统一社会信用代码
数据服务中心), as the standard provides for."""

ORGANISATION_TYPES: Final[Mapping[str, Mapping[str, str]]] = {
    "1": {"1": "机关", "2": "事业单位", "3": "中央编办直接管理机构编制的群众团体", "9": "其他"},
    "2": {"1": "外国常驻新闻机构", "9": "其他"},
    "3": {
        "1": "律师执业机构",
        "2": "公证处",
        "3": "基层法律服务所",
        "4": "司法鉴定机构",
        "5": "仲裁委员会",
        "9": "其他",
    },
    "4": {"1": "外国在华文化中心", "9": "其他"},
    "5": {"1": "社会团体", "2": "民办非企业单位", "3": "基金会", "9": "其他"},
    "6": {"1": "外国旅游部门常驻代表机构", "2": "港澳台地区旅游部门常驻内地（大陆）代表机构", "9": "其他"},  # noqa: RUF001 (official name)
    "7": {"1": "宗教活动场所", "2": "宗教院校", "9": "其他"},
    "8": {"1": "基层工会", "9": "其他"},
    "9": {"1": "企业", "2": "个体工商户", "3": "农民专业合作社"},
    "A": {"1": "军队事业单位", "9": "其他"},
    "N": {"1": "组级集体经济组织", "2": "村级集体经济组织", "3": "乡镇级集体经济组织", "9": "其他"},
    "Y": {"1": "其他 (not subdivided)"},
}
"""Position-2 codes allowed under each position-1 code (same sources as REGISTRATION_AUTHORITIES).
The e-bike chain mostly sees 91 (enterprise), 92 (individual business: dealers, repair shops) and
93 (farmer co-operative)."""


class CreditCodeReason(StrEnum):
    """Which check failed; the order of the members is the order the checks run in."""

    LENGTH = "length"
    ALPHABET = "alphabet"
    REGISTRATION_AUTHORITY = "registration_authority"
    ORGANISATION_TYPE = "organisation_type"
    DIVISION_CODE_FORMAT = "division_code_format"
    ORGANISATION_CODE_CHECK = "organisation_code_check"
    CHECK_CHARACTER = "check_character"


@dataclass(frozen=True, slots=True)
class CreditCodeViolation:
    """One failed check. ``position`` is 1-based (None when the whole code is at fault)."""

    reason: CreditCodeReason
    message: str
    position: int | None = None
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True, slots=True)
class CreditCodeResult:
    """Outcome of :func:`validate_credit_code`; ``code`` is the normalised input."""

    code: str
    violations: tuple[CreditCodeViolation, ...]

    @property
    def valid(self) -> bool:
        return not self.violations

    @property
    def reasons(self) -> tuple[CreditCodeReason, ...]:
        return tuple(v.reason for v in self.violations)

    @property
    def reason(self) -> CreditCodeReason | None:
        """The first failed check, or None when the code is valid."""
        return self.violations[0].reason if self.violations else None

    @property
    def registration_authority(self) -> str | None:
        return self.code[0] if len(self.code) == CODE_LENGTH else None

    @property
    def organisation_type(self) -> str | None:
        return self.code[1] if len(self.code) == CODE_LENGTH else None

    @property
    def division_code(self) -> str | None:
        """Positions 3-8: the registering authority's division (may be a retired code, or 100000 for
        national-level registration), so it is informational, not the enterprise's current site."""
        return self.code[2:8] if len(self.code) == CODE_LENGTH else None

    @property
    def organisation_code(self) -> str | None:
        """Positions 9-17: the GB 11714 organisation code including its check character."""
        return self.code[8:17] if len(self.code) == CODE_LENGTH else None


def normalise_credit_code(raw: str) -> str:
    """NFKC-normalise, strip surrounding whitespace and upper-case (see the module docstring)."""
    return unicodedata.normalize("NFKC", raw).strip().upper()


def compute_check_character(first17: str) -> str:
    """The GB 32100-2015 check character (position 18) for the first 17 characters.

    Raises ValueError when ``first17`` is not 17 characters of the 31-character alphabet.
    """
    if len(first17) != CODE_LENGTH - 1:
        raise ValueError(f"expected 17 characters, got {len(first17)}")
    try:
        total = sum(_VALUE[c] * w for c, w in zip(first17, WEIGHTS, strict=True))
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the GB 32100 alphabet") from None
    return ALPHABET[(31 - total % 31) % 31]


def compute_organisation_check(first8_of_org_code: str) -> str:
    """The GB 11714 check character (a digit or ``X``) for the 8 body characters of an organisation code.

    Raises ValueError when the body is not 8 characters from 0-9/A-Z.
    """
    if len(first8_of_org_code) != 8:
        raise ValueError(f"expected 8 characters, got {len(first8_of_org_code)}")
    try:
        total = sum(_ORG_VALUE[c] * w for c, w in zip(first8_of_org_code, ORG_WEIGHTS, strict=True))
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} is not in the GB 11714 alphabet") from None
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def validate_credit_code(
    raw: str,
    *,
    check_prefix: bool = True,
    check_organisation_code: bool = True,
) -> CreditCodeResult:
    """Validate a unified social credit code and say which checks failed.

    ``length`` and ``alphabet`` failures stop validation (nothing else can be computed); after them
    every other check runs, so a single typo may report e.g. both ``organisation_code_check`` and
    ``check_character``. ``check_prefix=False`` skips the position-1/2 tables (for codes issued by a
    department assigned after this table was written); ``check_organisation_code=False`` skips the
    GB 11714 inner check.
    """
    code = normalise_credit_code(raw)
    if len(code) != CODE_LENGTH:
        return CreditCodeResult(
            code,
            (
                CreditCodeViolation(
                    CreditCodeReason.LENGTH,
                    f"a unified social credit code has {CODE_LENGTH} characters, got {len(code)}",
                    expected=str(CODE_LENGTH),
                    actual=str(len(code)),
                ),
            ),
        )
    bad = [(i, c) for i, c in enumerate(code, start=1) if c not in _VALUE]
    if bad:
        return CreditCodeResult(code, tuple(_alphabet_violation(i, c) for i, c in bad))

    violations: list[CreditCodeViolation] = []
    if check_prefix:
        violations.extend(_prefix_violations(code))
    division = code[2:8]
    if not division.isdigit():
        pos = 3 + next(i for i, c in enumerate(division) if not c.isdigit())
        violations.append(
            CreditCodeViolation(
                CreditCodeReason.DIVISION_CODE_FORMAT,
                f"positions 3-8 must be a 6-digit GB/T 2260 division code, got {division!r} "
                f"(position {pos} is {code[pos - 1]!r})",
                position=pos,
                actual=division,
            )
        )
    if check_organisation_code:
        org_check = compute_organisation_check(code[8:16])
        if code[16] != org_check:
            violations.append(
                CreditCodeViolation(
                    CreditCodeReason.ORGANISATION_CODE_CHECK,
                    f"position 17: expected organisation-code check character {org_check!r} "
                    f"(GB 11714 check of positions 9-16), got {code[16]!r}",
                    position=17,
                    expected=org_check,
                    actual=code[16],
                )
            )
    check = compute_check_character(code[:17])
    if code[17] != check:
        violations.append(
            CreditCodeViolation(
                CreditCodeReason.CHECK_CHARACTER,
                f"position 18: expected check character {check!r} (GB 32100 mod-31 check of positions 1-17), "
                f"got {code[17]!r}",
                position=18,
                expected=check,
                actual=code[17],
            )
        )
    return CreditCodeResult(code, tuple(violations))


def is_valid_credit_code(raw: str) -> bool:
    """Shorthand for ``validate_credit_code(raw).valid``."""
    return validate_credit_code(raw).valid


def _alphabet_violation(position: int, char: str) -> CreditCodeViolation:
    if char in FORBIDDEN_LETTERS:
        why = "the letters I, O, S, V and Z are not used"
    elif char.isspace():
        why = "whitespace is only removed around the code"
    else:
        why = "allowed are 0-9 and A-Y without I, O, S, V"
    return CreditCodeViolation(
        CreditCodeReason.ALPHABET,
        f"position {position}: {char!r} is not in the GB 32100 alphabet ({why})",
        position=position,
        actual=char,
    )


def _prefix_violations(code: str) -> list[CreditCodeViolation]:
    authority, kind = code[0], code[1]
    kinds = ORGANISATION_TYPES.get(authority)
    if kinds is None:
        return [
            CreditCodeViolation(
                CreditCodeReason.REGISTRATION_AUTHORITY,
                f"position 1: unknown registration-authority code {authority!r}; "
                f"expected one of {', '.join(REGISTRATION_AUTHORITIES)}",
                position=1,
                expected="".join(REGISTRATION_AUTHORITIES),
                actual=authority,
            )
        ]
    if kind not in kinds:
        return [
            CreditCodeViolation(
                CreditCodeReason.ORGANISATION_TYPE,
                f"position 2: organisation-type code {kind!r} is not defined for registration authority "
                f"{authority!r} ({REGISTRATION_AUTHORITIES[authority]}); expected one of {', '.join(kinds)}",
                position=2,
                expected="".join(kinds),
                actual=kind,
            )
        ]
    return []


def make_credit_code(
    division: str = "320100",
    seed: int | str | None = None,
    *,
    registration_authority: str = "9",
    organisation_type: str = "1",
    rng: random.Random | None = None,
) -> str:
    """A syntactically valid, made-up credit code (both check characters correct), for tests and benchmarks.

    Deterministic for a given ``seed``; pass ``rng`` instead to draw a sequence from one generator.
    The organisation-code body is 8 random characters of the 31-character alphabet, so the result may
    collide with a real code; never use generated codes outside tests.
    """
    if len(division) != 6 or not division.isdigit():
        raise ValueError(f"division must be 6 digits, got {division!r}")
    prefix = registration_authority + organisation_type
    if len(prefix) != 2 or any(c not in _VALUE for c in prefix):
        raise ValueError(f"registration authority and organisation type must be single GB 32100 characters: {prefix!r}")
    gen = rng if rng is not None else random.Random(seed)
    body = "".join(gen.choice(ALPHABET) for _ in range(8))
    first17 = prefix + division + body + compute_organisation_check(body)
    return first17 + compute_check_character(first17)


def iter_credit_codes(count: int, *, seed: int | str | None = 0, division: str = "320100") -> Iterator[str]:
    """``count`` distinct made-up valid codes from one seeded generator (for bulk fixtures and benchmarks)."""
    gen = random.Random(seed)
    seen: set[str] = set()
    while len(seen) < count:
        code = make_credit_code(division, rng=gen)
        if code not in seen:
            seen.add(code)
            yield code
