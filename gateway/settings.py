"""The gateway's settings: where its store is, who may call it (ops tokens, merchant keys, the
secrets services and the worker sign with), how long it waits for workflows, and the limits on
what it takes in.

`from_env` reads the environment, then the credentials file `posflow up` generates
(`workers.config.Credentials`). It never opens the gateway by itself: without ops tokens it
refuses to start unless `POSFLOW_OPEN_GATEWAY=1` says so. An open gateway, or one that accepts a
known default secret, only listens on loopback (`check_exposure`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gateway.auth import MERCHANT_LABELS, ROLES
from workers.config import (
    DEFAULT_TASK_QUEUE,
    DEV_SECRET,
    SIGNERS,
    ConfigurationError,
    credentials_file,
    is_loopback,
    signing_secret,
    state_dir,
    stored_credentials,
)

OPEN_ENV = "POSFLOW_OPEN_GATEWAY"
HOST_ENV = "POSFLOW_GATEWAY_HOST"
# Secrets every install has known: fine for a laptop, never on a network.
KNOWN_DEFAULT_SECRETS = frozenset({DEV_SECRET, ""})
MIN_SECRET_LENGTH = 16  # off loopback
# The largest request body taken (JSON: an application, documents as file references, a
# callback, a snapshot): anything longer is answered 413 before it is read in full.
MAX_BODY_BYTES = 256 * 1024


class InsecureGateway(ConfigurationError):
    """The gateway would face a network open, or with a secret anyone knows."""


class GatewayConfigError(ConfigurationError):
    """The environment does not say who may call the gateway."""


@dataclass(frozen=True)
class GatewaySettings:
    database_url: str
    task_queue: str = DEFAULT_TASK_QUEUE
    # Who signs what reaches the gateway: each service its callbacks, the worker its snapshots.
    secrets: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SIGNERS, DEV_SECRET))
    temporal_ui_url: str = "http://127.0.0.1:8233"
    namespace: str = "default"
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> role
    merchant_keys: dict[str, str] = field(default_factory=dict)  # key -> channel, or "all"
    # Open: no sign-in, everyone acts as admin (signatures are still checked). None: open when
    # neither tokens nor merchant keys are given, for settings built in code (tests); `from_env`
    # always decides explicitly.
    open: bool | None = None
    host: str = "127.0.0.1"  # where it listens: anything but loopback must be closed
    refresh_seconds: int = 10  # how often dashboard pages refresh themselves
    # How long a callback or action waits for its update's result once the workflow accepted it;
    # after that the sender gets 202 pending and the gateway records the result when it comes.
    update_wait_seconds: float = 5.0
    # How long the workflow may take to accept or refuse a message (its validator runs in a
    # workflow task: a worker must be there) before the sender is told to try again (503).
    update_accept_seconds: float = 10.0
    # The merchant's documents wait for their validation result, at most this long (then 503).
    documents_wait_seconds: float = 30.0
    retry_after_seconds: int = 5  # the `Retry-After` of every 503
    # How often the gateway looks for messages left pending by a gateway that stopped, and how
    # old such a row must be (`gateway.orphans`); 0: never.
    pending_sweep_seconds: float = 30.0
    pending_sweep_after_seconds: float = 60.0
    max_body_bytes: int = MAX_BODY_BYTES
    # The API's own description (/docs, /openapi.json): served to viewers; False: not at all.
    api_docs: bool = True

    @property
    def is_open(self) -> bool:
        if self.open is None:
            return not self.tokens and not self.merchant_keys
        return self.open

    def check_exposure(self) -> None:
        """Refuse to face a network open or with a secret anyone knows (InsecureGateway)."""
        if is_loopback(self.host):
            return
        if self.is_open:
            raise InsecureGateway(
                f"the gateway is open (no sign-in) and would listen on {self.host}: "
                f"set POSFLOW_TOKENS, or listen on 127.0.0.1 only"
            )
        weak = sorted(
            signer
            for signer, secret in self.secrets.items()
            if secret in KNOWN_DEFAULT_SECRETS or len(secret) < MIN_SECRET_LENGTH
        )
        if weak:
            names = ", ".join(f"POSFLOW_{s.upper()}_SECRET" for s in weak)
            raise InsecureGateway(
                f"the gateway would listen on {self.host} with a default or short secret "
                f"({names}): set each to a random string of {MIN_SECRET_LENGTH} or more "
                f"characters, or listen on 127.0.0.1 only"
            )

    @classmethod
    def from_env(cls) -> GatewaySettings:
        url = os.environ.get("POSFLOW_GATEWAY_DATABASE_URL") or os.environ.get("DATABASE_URL")
        stored = stored_credentials()
        tokens = tokens_from_env() or (
            {token: role for role, token in stored.tokens.items()} if stored else {}
        )
        merchant_keys = merchant_keys_from_env() or (
            {key: label for label, key in stored.merchant_keys.items()} if stored else {}
        )
        open_ = os.environ.get(OPEN_ENV, "").strip().lower() in ("1", "true", "yes")
        if not open_ and not tokens:
            raise GatewayConfigError(
                f"no ops tokens: run `posflow up` once (it writes {credentials_file()}), "
                "set POSFLOW_TOKENS=viewer:TOKEN,operator:TOKEN,admin:TOKEN, or set "
                f"{OPEN_ENV}=1 for a gateway without sign-in on loopback"
            )
        return cls(
            database_url=url or f"sqlite:///{state_dir() / 'gateway.db'}",
            task_queue=os.environ.get("POSFLOW_TASK_QUEUE", DEFAULT_TASK_QUEUE),
            secrets={s: signing_secret(s) for s in SIGNERS},
            temporal_ui_url=os.environ.get("POSFLOW_TEMPORAL_UI_URL", "http://127.0.0.1:8233"),
            namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"),
            tokens=tokens,
            merchant_keys=merchant_keys,
            open=open_,
            host=os.environ.get(HOST_ENV, "127.0.0.1"),
            update_wait_seconds=_seconds("POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS", 5.0),
            update_accept_seconds=_seconds("POSFLOW_GATEWAY_UPDATE_ACCEPT_SECONDS", 10.0),
            documents_wait_seconds=_seconds("POSFLOW_GATEWAY_DOCUMENTS_WAIT_SECONDS", 30.0),
            retry_after_seconds=max(1, round(_seconds("POSFLOW_GATEWAY_RETRY_AFTER_SECONDS", 5))),
            pending_sweep_seconds=_seconds("POSFLOW_GATEWAY_PENDING_SWEEP_SECONDS", 30.0),
            pending_sweep_after_seconds=_seconds(
                "POSFLOW_GATEWAY_PENDING_SWEEP_AFTER_SECONDS", 60.0
            ),
            api_docs=os.environ.get("POSFLOW_GATEWAY_API_DOCS", "1").strip().lower()
            not in ("0", "false", "no"),
        )


def tokens_from_env() -> dict[str, str]:
    """`POSFLOW_TOKENS=role:token,role:token` (a token is any string without commas)."""
    tokens: dict[str, str] = {}
    for item in os.environ.get("POSFLOW_TOKENS", "").split(","):
        role, _, token = item.strip().partition(":")
        if not token:
            continue
        if role not in ROLES:
            raise GatewayConfigError(f"POSFLOW_TOKENS: role must be one of {', '.join(ROLES)}")
        tokens[token] = role
    return tokens


def merchant_keys_from_env() -> dict[str, str]:
    """`POSFLOW_MERCHANT_KEYS=channel:key,...`: a key per channel (bank, lakala, tmall, alipay),
    or `all:key` for a front end that serves every channel."""
    keys: dict[str, str] = {}
    for item in os.environ.get("POSFLOW_MERCHANT_KEYS", "").split(","):
        label, _, key = item.strip().partition(":")
        if not key:
            continue
        if label not in MERCHANT_LABELS:
            raise GatewayConfigError(
                f"POSFLOW_MERCHANT_KEYS: the label must be one of {', '.join(MERCHANT_LABELS)}"
            )
        keys[key] = label
    return keys


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 <= value <= 3600:
        raise ValueError(f"{name} must be between 0 and 3600 seconds, not {raw!r}")
    return value
