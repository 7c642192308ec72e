"""HMAC signatures on callbacks: the sender signs the raw body with a timestamp, the receiver
refuses a bad, stale or future-dated signature. Header: `X-Posflow-Signature: t=<unix>,v1=<hex>`."""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Posflow-Signature"
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The signature is missing, malformed, stale or does not match."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, timestamp: int) -> str:
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    body: bytes, header: str | None, secret: str, now: int, tolerance: int = TOLERANCE_SECONDS
) -> int:
    """Check a signature header; returns its timestamp (the caller may also refuse a replay)."""
    if not header:
        raise SignatureError(f"{HEADER} header is missing")
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError) as err:
        raise SignatureError(f"{HEADER} must look like t=<unix seconds>,v1=<hex>") from err
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"signature timestamp is more than {tolerance} s from now")
    if not hmac.compare_digest(given, _digest(secret, timestamp, body)):
        raise SignatureError("signature does not match the body")
    return timestamp
