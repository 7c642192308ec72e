"""Who may do what: bearer tokens with a role (viewer < operator < admin) for ops and admin calls,
the same tokens in a cookie for the dashboard. With no tokens configured (the embedded defaults
of `make up`) everyone is admin, and the dashboard says so on every page."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

from fastapi import Request

ROLES = ("viewer", "operator", "admin")
COOKIE = "posflow_token"


def tokens_from_env() -> dict[str, str]:
    """`POSFLOW_TOKENS=role:token,role:token` (a token is any string without commas)."""
    tokens: dict[str, str] = {}
    for item in os.environ.get("POSFLOW_TOKENS", "").split(","):
        role, _, token = item.strip().partition(":")
        if not token:
            continue
        if role not in ROLES:
            raise ValueError(f"POSFLOW_TOKENS: role must be one of {', '.join(ROLES)}")
        tokens[token] = role
    return tokens


@dataclass(frozen=True)
class Authority:
    tokens: dict[str, str] = field(default_factory=dict)  # token -> role

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def role_of(self, token: str | None) -> str | None:
        if not token:
            return None
        for known, role in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return role
        return None

    def api_role(self, request: Request) -> str | None:
        if not self.enabled:
            return "admin"
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.role_of(token.strip()) if scheme.lower() == "bearer" else None

    def dashboard_role(self, request: Request) -> str | None:
        if not self.enabled:
            return "admin"
        return self.role_of(request.cookies.get(COOKIE))

    @staticmethod
    def allows(role: str | None, needed: str) -> bool:
        return role is not None and ROLES.index(role) >= ROLES.index(needed)
