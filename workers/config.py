"""Settings for connecting to Temporal, read once from the environment, and the credentials of
the embedded stack (ops tokens, merchant keys, signing secrets) that `posflow up` generates."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TASK_QUEUE = "pos-onboarding"


@dataclass(frozen=True)
class TemporalSettings:
    address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = DEFAULT_TASK_QUEUE
    api_key: str | None = None  # Temporal Cloud
    tls_cert: Path | None = None  # mTLS client certificate and key, for a self-hosted cluster
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # host:port where this process's Temporal clients and workers serve Prometheus `/metrics`
    # (the SDK's runtime metrics and posflow's stage metrics); None: not served.
    metrics_address: str | None = None

    @classmethod
    def from_env(cls) -> TemporalSettings:
        def path(name: str) -> Path | None:
            value = os.environ.get(name)
            return Path(value) if value else None

        return cls(
            address=os.environ.get("TEMPORAL_ADDRESS", cls.address),
            namespace=os.environ.get("TEMPORAL_NAMESPACE", cls.namespace),
            task_queue=os.environ.get("POSFLOW_TASK_QUEUE", cls.task_queue),
            api_key=os.environ.get("TEMPORAL_API_KEY") or None,
            tls_cert=path("TEMPORAL_TLS_CERT"),
            tls_key=path("TEMPORAL_TLS_KEY"),
            tls_ca=path("TEMPORAL_TLS_CA"),
            metrics_address=os.environ.get("POSFLOW_WORKER_METRICS") or None,
        )


def state_dir() -> Path:
    """Where the embedded stack keeps its files (`.posflow/` in the working directory)."""
    return Path(os.environ.get("POSFLOW_HOME", ".posflow"))


# --- credentials ---------------------------------------------------------------------------------

CREDENTIALS_FILE_ENV = "POSFLOW_CREDENTIALS_FILE"
# The secret every install shared before credentials were generated: accepted only on loopback.
DEV_SECRET = "dev-secret"
OPS_ROLES = ("viewer", "operator", "admin")
# Who signs what reaches the gateway: each service its callbacks, the worker its snapshots.
SIGNERS = ("review", "contract", "device", "logistics", "worker")
ALL_CHANNELS = "all"  # the label of a merchant key valid for every channel


class ConfigurationError(ValueError):
    """A setting or a credential that stops a role from starting; the message says which and
    how to fix it, never a secret."""


class CredentialsError(ConfigurationError):
    """The credentials file is unreadable, malformed or readable by others. The message names
    the file and the rule, never a credential."""


class CredentialsUnreadable(CredentialsError):
    """This process may not read the credentials file (another user's)."""


@dataclass(frozen=True)
class Credentials:
    """What `posflow up` generates on its first run, into `<state dir>/credentials.json` (mode
    0600): the ops tokens by role, the merchant keys by channel (or `all`), and the callback
    signing secret of each service and of the worker. The environment wins over the file:
    `POSFLOW_TOKENS`, `POSFLOW_MERCHANT_KEYS`, `POSFLOW_<SIGNER>_SECRET`."""

    tokens: dict[str, str]  # role -> token
    merchant_keys: dict[str, str]  # channel or "all" -> key
    secrets: dict[str, str]  # signer -> secret

    @classmethod
    def generate(cls) -> Credentials:
        def new() -> str:
            return secrets.token_urlsafe(32)

        return cls(
            tokens={role: new() for role in OPS_ROLES},
            merchant_keys={ALL_CHANNELS: new()},
            secrets={signer: new() for signer in SIGNERS},
        )

    def completed(self) -> Credentials:
        """These credentials with anything missing (a role, a signer added since) generated."""
        fresh = Credentials.generate()
        return Credentials(
            tokens={**fresh.tokens, **self.tokens},
            merchant_keys=self.merchant_keys or fresh.merchant_keys,
            secrets={**fresh.secrets, **self.secrets},
        )

    def to_json(self) -> str:
        body = {"tokens": self.tokens, "merchant_keys": self.merchant_keys, "secrets": self.secrets}
        return json.dumps(body, indent=2) + "\n"


def credentials_file() -> Path:
    return Path(os.environ.get(CREDENTIALS_FILE_ENV) or state_dir() / "credentials.json")


def read_credentials(path: Path | None = None) -> Credentials | None:
    """The credentials file, or None when there is none."""
    path = path or credentials_file()
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise CredentialsError(
            f"{path} is readable by others (mode {mode:04o}): `chmod 600 {path}` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CredentialsUnreadable(f"{path} cannot be read: {err.strerror}") from None
    except ValueError:
        raise CredentialsError(f"{path} is not JSON") from None

    def section(name: str) -> dict[str, str]:
        value = data.get(name, {}) if isinstance(data, dict) else None
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
        ):
            raise CredentialsError(f"{path}: {name!r} must map names to non-empty strings")
        return dict(value)

    tokens = section("tokens")
    if unknown := set(tokens) - set(OPS_ROLES):
        raise CredentialsError(f"{path}: unknown roles {sorted(unknown)} in 'tokens'")
    return Credentials(tokens, section("merchant_keys"), section("secrets"))


def ensure_credentials(path: Path | None = None) -> Path | None:
    """Create the credentials file (mode 0600) if there is none, or add what it lacks; returns
    its path if it was written, None if it was complete already."""
    path = path or credentials_file()
    held = read_credentials(path)
    wanted = held.completed() if held is not None else Credentials.generate()
    if wanted == held:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name with mode 0600 from the start, then renamed: never
    # readable by others, never half written.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".credentials-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(wanted.to_json())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def stored_credentials() -> Credentials | None:
    """The credentials file if there is one and this process may read it, else None (a file
    readable by others is refused: `CredentialsError`)."""
    try:
        return read_credentials()
    except CredentialsUnreadable:
        return None


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def signing_secret(signer: str) -> str:
    """The secret `signer` (a service, or the worker) signs with: `POSFLOW_<SIGNER>_SECRET`, else
    the credentials file, else the development default (which a gateway accepts on loopback
    only)."""
    from_env = os.environ.get(f"POSFLOW_{signer.upper()}_SECRET")
    if from_env:
        return from_env
    held = stored_credentials()
    if held is not None and held.secrets.get(signer):
        return held.secrets[signer]
    return DEV_SECRET


def role_environment() -> dict[str, str]:
    """This process's environment for a posflow role started as a child process (tests, the
    benchmark): without posflow's, Temporal's or a database's settings, which the caller sets
    for the child, but with the payload key ring, so the child reads what this process writes."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POSFLOW_", "TEMPORAL_", "DATABASE_URL"))
        or k.startswith("POSFLOW_KEYRING")
    }
