"""HMAC signatures on callbacks: the sender signs the raw body with a timestamp, the receiver
refuses a bad, stale or future-dated signature.

Header: `X-Posflow-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is the lowercase hex
HMAC-SHA256, under the sender's secret, of `<t>.` followed by the raw body bytes. The header is
parsed strictly: ASCII only, exactly one `t` (digits) and one `v1` (64 lowercase hex digits), in
either order, nothing else. Anything else is refused, never guessed at. A receiver that refuses
replays keys them on `Signature.key` (the pair), never on the header's text.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import NamedTuple

HEADER = "X-Posflow-Signature"
TOLERANCE_SECONDS = 300
MAX_HEADER_LENGTH = 200  # t (at most 12 digits) and v1 (64) with their names fit easily
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
SHAPE = f"{HEADER} must be exactly t=<unix seconds>,v1=<64 lowercase hex digits>"


class SignatureError(Exception):
    """The signature is missing, malformed, stale or does not match."""


class Signature(NamedTuple):
    timestamp: int
    digest: str  # the v1 value

    @property
    def key(self) -> str:
        """The same for every spelling of the same signature: what a replay check remembers."""
        return f"t={self.timestamp},v1={self.digest}"


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def parse(header: str | None) -> Signature:
    """The header's `t` and `v1`, or SignatureError for any other shape."""
    if not header:
        raise SignatureError(f"{HEADER} header is missing")
    if len(header) > MAX_HEADER_LENGTH or not header.isascii():
        raise SignatureError(SHAPE)
    fields: dict[str, str] = {}
    for item in header.split(","):
        name, equals, value = item.partition("=")
        if not equals or name not in ("t", "v1") or name in fields:
            raise SignatureError(SHAPE)
        fields[name] = value
    timestamp, digest = fields.get("t", ""), fields.get("v1", "")
    if not _TIMESTAMP.fullmatch(timestamp) or not _DIGEST.fullmatch(digest):
        raise SignatureError(SHAPE)
    return Signature(int(timestamp), digest)


def check(
    body: bytes, header: str | None, secret: str, now: int, tolerance: int = TOLERANCE_SECONDS
) -> Signature:
    """Check a signature header; returns the signature (the caller may also refuse a replay,
    keyed on `Signature.key`)."""
    signature = parse(header)
    if abs(now - signature.timestamp) > tolerance:
        raise SignatureError(f"signature timestamp is more than {tolerance} s from now")
    expected = _digest(secret, signature.timestamp, body)
    if not hmac.compare_digest(signature.digest.encode(), expected.encode()):
        raise SignatureError("signature does not match the body")
    return signature


def verify(
    body: bytes, header: str | None, secret: str, now: int, tolerance: int = TOLERANCE_SECONDS
) -> int:
    """Check a signature header; returns its timestamp."""
    return check(body, header, secret, now, tolerance).timestamp
