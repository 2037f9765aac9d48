"""Opaque page tokens for keyset pagination.

A token carries the last key of the previous page and a fingerprint of the query's filters, so a token
used with other filters, or edited by hand, is refused with INVALID_ARGUMENT instead of returning a
wrong page. (It grants nothing: every page is still filtered by what the caller may see.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping

from meshkit.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# An integer position (a sequence number, a start second) in a token: what fits SQL's BIGINT, in ASCII digits.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(filters: Mapping[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_token(last_key: str, filters: Mapping[str, object]) -> str:
    raw = json.dumps({"k": last_key, "f": _fingerprint(filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: Mapping[str, object]) -> str | None:
    """The last key of the previous page, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        last_key, fingerprint = data["k"], data["f"]
        if not isinstance(last_key, str) or not isinstance(fingerprint, str):
            raise ValueError("malformed")
    except (ValueError, KeyError, TypeError, UnicodeError) as error:
        raise InvalidArgument([FieldViolation("page_token", "not a token this service issued")]) from error
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument([FieldViolation("page_token", "was issued for a query with other filters")])
    return last_key


def decode_integer_token(token: str, filters: Mapping[str, object]) -> int | None:
    """`decode_token` for lists keyed by an integer (a sequence number, a start second): the last key as an int,
    or None for the first page. A token whose key is not such an integer was not issued here: INVALID_ARGUMENT
    (a forged one could otherwise reach SQL as a number no column holds)."""
    last_key = decode_token(token, filters)
    if last_key is None:
        return None
    return integer_position(last_key, "page_token")


def integer_position(text: str, field: str) -> int:
    """A position a client was given (a page token's key, a stream's resume token) back as an int."""
    if not _INTEGER.fullmatch(text):
        raise InvalidArgument([FieldViolation(field, "not a token this service issued")])
    return int(text)
