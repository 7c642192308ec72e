"""The environment checked before a role starts: every wrong or missing value at once, each named
with the rule it breaks, instead of the first one failing deep inside a connection.

`check_environment(role)` returns the problems (empty: fine); `require_valid_environment(role)`
raises `InvalidEnvironment` with one line per problem, which the `posflow worker | gateway |
services` commands print before exiting. Messages name variables and rules, never a value that
may be secret (a token, a key, a database password).

Roles: `worker` (Temporal connection, key ring, service URLs, tuning and shutdown grace),
`gateway` (Temporal connection, key ring, its database, who may call it and where it listens) and
`service` (a sandbox service: its database, the gateway it calls back, simulated faults).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from workers.codec import KEYRING_ENV, KEYRING_FILE_ENV, KeyRingError, load_key_ring
from workers.config import (
    DEV_SECRET,
    OPS_ROLES,
    SIGNERS,
    ConfigurationError,
    CredentialsError,
    is_loopback,
    read_credentials,
)

Role = Literal["worker", "gateway", "service"]
ROLES: tuple[Role, ...] = ("worker", "gateway", "service")
SERVICES = ("review", "contract", "device", "logistics", "notification")
# The external services the worker's activities call, each at POSFLOW_<NAME>_URL.
WORKER_SERVICE_URLS = tuple(f"POSFLOW_{name.upper()}_URL" for name in SERVICES)

# SQLAlchemy backends posflow's stores run on, and for each its drivers and the module each
# imports. Async drivers (asyncpg, aiosqlite) are not here: the stores use synchronous engines.
KNOWN_DRIVERS: dict[str, dict[str, str]] = {
    "sqlite": {"pysqlite": "sqlite3"},
    "postgresql": {"psycopg": "psycopg", "psycopg2": "psycopg2", "pg8000": "pg8000"},
}
# What the gateway takes as a secret off loopback (as `gateway.settings.check_exposure` does).
MIN_SECRET_LENGTH = 16
TRUE_WORDS = ("1", "true", "yes")
BOOL_WORDS = (*TRUE_WORDS, "0", "false", "no")
MAX_SECONDS = 3600
GATEWAY_SECONDS = (
    "POSFLOW_GATEWAY_UPDATE_WAIT_SECONDS",
    "POSFLOW_GATEWAY_UPDATE_ACCEPT_SECONDS",
    "POSFLOW_GATEWAY_DOCUMENTS_WAIT_SECONDS",
    "POSFLOW_GATEWAY_RETRY_AFTER_SECONDS",
    "POSFLOW_GATEWAY_PENDING_SWEEP_SECONDS",
    "POSFLOW_GATEWAY_PENDING_SWEEP_AFTER_SECONDS",
)
_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class Problem:
    """One variable and the rule its value (or its absence) breaks."""

    variable: str
    rule: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.rule}"


class InvalidEnvironment(ConfigurationError):
    """The environment does not let a role start; the message lists every problem."""

    def __init__(self, role: str, problems: Iterable[Problem]) -> None:
        self.role = role
        self.problems = list(problems)
        super().__init__(format_problems(role, self.problems))


def format_problems(role: str, problems: Iterable[Problem]) -> str:
    listed = list(problems)
    lines = [f"the {role} cannot start: {len(listed)} setting(s) to fix"]
    lines += [f"  - {problem}" for problem in listed]
    lines.append("See deploy/README.md for every setting.")
    return "\n".join(lines)


def require_valid_environment(
    role: Role, environ: Mapping[str, str] | None = None, services: Iterable[str] = SERVICES
) -> None:
    """Raise `InvalidEnvironment` listing every problem of `role`'s environment, if any."""
    problems = check_environment(role, environ, services)
    if problems:
        raise InvalidEnvironment(role, problems)


def check_environment(
    role: Role, environ: Mapping[str, str] | None = None, services: Iterable[str] = SERVICES
) -> list[Problem]:
    """Every problem of the environment for `role` (`services`: which sandbox services a
    `service` role serves); an empty list when it may start."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    env = os.environ if environ is None else environ
    check = _Checker(env)
    check.choice("POSFLOW_LOG_FORMAT", ("json", "console"))
    if role in ("worker", "gateway"):
        check.temporal()
        check.key_ring()
    if role == "worker":
        check.worker()
    elif role == "gateway":
        check.gateway()
    else:
        check.service(list(services))
    return check.problems


class _Checker:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[Problem] = []

    def add(self, variable: str, rule: str) -> None:
        self.problems.append(Problem(variable, rule))

    def get(self, name: str) -> str:
        return self.env.get(name, "").strip()

    # --- rules for one variable ---------------------------------------------------------------

    def choice(self, name: str, allowed: Iterable[str]) -> None:
        value = self.get(name).lower()
        allowed = tuple(allowed)
        if value and value not in allowed:
            self.add(name, f"must be one of {', '.join(allowed)}")

    def host_port(self, name: str, required_rule: str | None = None) -> None:
        raw = self.get(name)
        if not raw:
            if required_rule:
                self.add(name, required_rule)
            return
        if rule := _host_port_problem(raw):
            self.add(name, rule)

    def url(self, name: str) -> str | None:
        """Checks an http(s) URL if set; returns its host when it is one."""
        raw = self.get(name)
        if not raw:
            return None
        parts = urlsplit(raw)
        try:
            parts.port  # noqa: B018 (raises on a bad port)
        except ValueError:
            self.add(name, "must be an http:// or https:// URL with a valid port")
            return None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(
                name, "must be an http:// or https:// URL with a host, e.g. http://gateway:8000"
            )
            return None
        return parts.hostname

    def positive_int(self, name: str) -> None:
        raw = self.get(name)
        if raw and (not raw.isdigit() or int(raw) < 1):
            self.add(name, "must be a positive integer")

    def number(self, name: str, low: float, high: float, unit: str = "") -> None:
        raw = self.get(name)
        if not raw:
            return
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            self.add(name, f"must be a number from {low:g} to {high:g}{unit}")

    def readable_file(self, name: str) -> bool:
        raw = self.get(name)
        if not raw:
            return False
        path = Path(raw)
        if not path.is_file():
            self.add(name, "must be the path of an existing file")
            return False
        if not os.access(path, os.R_OK):
            self.add(name, "names a file this process may not read")
            return False
        return True

    def database_url(self, name: str, fallback: str | None = None) -> None:
        """A SQLAlchemy URL on a backend and driver posflow's stores run on, its driver
        installed. Unset: the SQLite default under POSFLOW_HOME (fine on one machine)."""
        raw = self.get(name) or (self.get(fallback) if fallback else "")
        if not raw:
            return
        shown = name if self.get(name) or not fallback else fallback
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(raw)
        except (ArgumentError, ValueError):
            self.add(
                shown,
                "must be a SQLAlchemy database URL, e.g. postgresql+psycopg://user:pw@host:5432/posflow",
            )
            return
        backend = url.get_backend_name()
        drivers = KNOWN_DRIVERS.get(backend)
        if drivers is None:
            self.add(
                shown, f"the database must be one of {', '.join(KNOWN_DRIVERS)}, not {backend!r}"
            )
            return
        driver = url.drivername.partition("+")[2] or next(iter(drivers))
        module = drivers.get(driver)
        if module is None:
            self.add(shown, f"unknown {backend} driver {driver!r}: one of {', '.join(drivers)}")
        elif importlib.util.find_spec(module) is None:
            self.add(shown, f"the {backend} driver {driver!r} is not installed (module {module!r})")
        if backend == "postgresql" and not url.database:
            self.add(shown, "names no database: postgresql+psycopg://user:pw@host:5432/DATABASE")

    # --- rules for a role ---------------------------------------------------------------------

    def temporal(self) -> None:
        self.host_port("TEMPORAL_ADDRESS")
        namespace = self.env.get("TEMPORAL_NAMESPACE")
        if namespace is not None and not _NAMESPACE.match(namespace.strip()):
            self.add(
                "TEMPORAL_NAMESPACE", "must be a namespace name (letters, digits, '.', '-', '_')"
            )
        if "POSFLOW_TASK_QUEUE" in self.env and not self.get("POSFLOW_TASK_QUEUE"):
            self.add("POSFLOW_TASK_QUEUE", "must not be blank (unset it for the default)")
        if "TEMPORAL_API_KEY" in self.env and not self.get("TEMPORAL_API_KEY"):
            self.add("TEMPORAL_API_KEY", "is set but blank: unset it, or give the API key")
        cert, key = self.get("TEMPORAL_TLS_CERT"), self.get("TEMPORAL_TLS_KEY")
        if bool(cert) != bool(key):
            missing = "TEMPORAL_TLS_KEY" if cert else "TEMPORAL_TLS_CERT"
            self.add(
                missing, "TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY go together: set both or neither"
            )
        self.readable_file("TEMPORAL_TLS_CERT")
        self.readable_file("TEMPORAL_TLS_KEY")
        if self.get("TEMPORAL_TLS_CA"):
            self.readable_file("TEMPORAL_TLS_CA")
            if not (cert and key) and not self.get("TEMPORAL_API_KEY"):
                self.add(
                    "TEMPORAL_TLS_CA",
                    "is used only with TLS: set TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY, or "
                    "TEMPORAL_API_KEY",
                )
        self.host_port("POSFLOW_WORKER_METRICS")

    def key_ring(self) -> None:
        try:
            load_key_ring(self.env)
        except KeyRingError as err:
            variable = KEYRING_ENV if self.get(KEYRING_ENV) else KEYRING_FILE_ENV
            self.add(variable, f"no usable payload key ring: {err}")

    def worker(self) -> None:
        # Here, not at the top: the worker module imports the workflows, which the gateway's and
        # the services' checks have no use for.
        from workers.main import (
            MAX_CACHED_WORKFLOWS_ENV,
            MAX_CONCURRENT_ACTIVITIES_ENV,
            MAX_CONCURRENT_WORKFLOW_TASKS_ENV,
            SHUTDOWN_GRACE_ENV,
        )

        for name in (
            MAX_CACHED_WORKFLOWS_ENV,
            MAX_CONCURRENT_ACTIVITIES_ENV,
            MAX_CONCURRENT_WORKFLOW_TASKS_ENV,
        ):
            self.positive_int(name)
        self.number(SHUTDOWN_GRACE_ENV, 0, MAX_SECONDS, " seconds")
        for name in (*WORKER_SERVICE_URLS, "POSFLOW_PUBLIC_URL"):
            self.url(name)
        gateway = self.url("POSFLOW_GATEWAY_URL")
        if gateway is not None and not is_loopback(gateway):
            self.strong_secret("worker", "the worker signs its snapshots to a gateway off loopback")

    def gateway(self) -> None:
        self.database_url("POSFLOW_GATEWAY_DATABASE_URL", fallback="DATABASE_URL")
        self.choice("POSFLOW_OPEN_GATEWAY", BOOL_WORDS)
        self.choice("POSFLOW_GATEWAY_API_DOCS", BOOL_WORDS)
        for name in GATEWAY_SECONDS:
            self.number(name, 0, MAX_SECONDS, " seconds")
        self.url("POSFLOW_TEMPORAL_UI_URL")
        host = self.get("POSFLOW_GATEWAY_HOST") or "127.0.0.1"
        if not _is_host(host):
            self.add("POSFLOW_GATEWAY_HOST", "must be an IP address or a host name to listen on")
        tokens = self.pairs("POSFLOW_TOKENS", OPS_ROLES, "role")
        self.merchant_keys()
        open_ = self.get("POSFLOW_OPEN_GATEWAY").lower() in TRUE_WORDS
        if not open_ and tokens == 0 and not self.stored_tokens():
            self.add(
                "POSFLOW_TOKENS",
                "no ops tokens: set POSFLOW_TOKENS=viewer:TOKEN,operator:TOKEN,admin:TOKEN "
                "(or POSFLOW_OPEN_GATEWAY=1, on loopback only)",
            )
        if not is_loopback(host):
            if open_:
                self.add(
                    "POSFLOW_OPEN_GATEWAY", f"an open gateway must listen on loopback, not {host}"
                )
            for signer in SIGNERS:
                self.strong_secret(signer, f"the gateway listens on {host}")

    def service(self, names: list[str]) -> None:
        unknown = sorted(set(names) - set(SERVICES))
        if unknown:
            raise ValueError(f"unknown services {unknown}: {', '.join(SERVICES)}")
        self.database_url("DATABASE_URL")
        gateway = self.url("POSFLOW_GATEWAY_URL")
        for name in names:
            prefix = f"POSFLOW_{name.upper()}_"
            self.delay(prefix + "DELAY_MS")
            self.number(prefix + "FAILURE_RATE", 0, 1)
            if name in SIGNERS and gateway is not None and not is_loopback(gateway):
                self.strong_secret(name, "it signs its callbacks to a gateway off loopback")

    # --- helpers ------------------------------------------------------------------------------

    def delay(self, name: str) -> None:
        raw = self.get(name)
        if not raw:
            return
        low, _, high = raw.partition("-")
        try:
            bounds = (float(low), float(high or low))
        except ValueError:
            bounds = (math.nan, math.nan)
        if not 0 <= bounds[0] <= bounds[1] < math.inf:
            self.add(name, "must be milliseconds, N or LOW-HIGH with 0 <= LOW <= HIGH")

    def pairs(self, name: str, labels: Iterable[str], what: str) -> int | None:
        """`label:value,...`; the number of pairs, None when malformed (and said so)."""
        labels = tuple(labels)
        count = 0
        for item in self.get(name).split(","):
            if not item.strip():
                continue
            label, _, value = item.strip().partition(":")
            if not value or label not in labels:
                self.add(name, f"each item must be {what}:VALUE, {what} one of {', '.join(labels)}")
                return None
            count += 1
        return count

    def merchant_keys(self) -> None:
        from gateway.auth import MERCHANT_LABELS

        self.pairs("POSFLOW_MERCHANT_KEYS", MERCHANT_LABELS, "channel")

    def stored_tokens(self) -> bool:
        try:
            stored = read_credentials(_credentials_path(self.env))
        except CredentialsError as err:
            self.add("POSFLOW_CREDENTIALS_FILE", str(err))
            return True  # said already
        return stored is not None and bool(stored.tokens)

    def strong_secret(self, signer: str, why: str) -> None:
        name = f"POSFLOW_{signer.upper()}_SECRET"
        secret = self.get(name) or self.stored_secret(signer)
        if secret in ("", DEV_SECRET) or len(secret) < MIN_SECRET_LENGTH:
            self.add(name, f"must be a random string of {MIN_SECRET_LENGTH}+ characters ({why})")

    def stored_secret(self, signer: str) -> str:
        try:
            stored = read_credentials(_credentials_path(self.env))
        except CredentialsError:
            return ""
        return stored.secrets.get(signer, "") if stored else ""


def _credentials_path(env: Mapping[str, str]) -> Path:
    configured = env.get("POSFLOW_CREDENTIALS_FILE")
    if configured:
        return Path(configured)
    return Path(env.get("POSFLOW_HOME") or ".posflow") / "credentials.json"


def _host_port_problem(raw: str) -> str | None:
    if "://" in raw:
        return "must be host:port without a scheme, e.g. temporal:7233"
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        return "must be host:port, e.g. temporal:7233"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "must be host:port with a port from 1 to 65535"
    if not _is_host(host.removeprefix("[").removesuffix("]")):
        return "must be host:port with a valid host name or IP address"
    return None


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and len(host) <= 253
