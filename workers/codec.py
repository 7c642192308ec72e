"""Personal data stays out of Temporal's history: every payload is encrypted with AES-256-GCM under
the current key of a key ring, and decoded with whichever key it names.

An encrypted payload has the encoding `binary/encrypted`, the key's id in `encryption-key-id`, and
as data a fresh 12-byte nonce followed by the AES-GCM ciphertext (with its tag) of the original
payload, metadata and data, serialized as a `Payload` proto (the layout of Temporal's encryption
samples). A payload that is not encrypted (histories written before the codec existed) passes
through unchanged.

The key ring is JSON, `{"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>", ...}}`, read
from the environment variable `POSFLOW_KEYRING`, else from the file `POSFLOW_KEYRING_FILE`, else
from `<state dir>/keyring.json`; a file must be readable by its owner only (mode 0600). Keys are
never taken from the command line and never printed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError, Message
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.converter import PayloadCodec

from workers.config import state_dir

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32  # AES-256
KEYRING_ENV = "POSFLOW_KEYRING"
KEYRING_FILE_ENV = "POSFLOW_KEYRING_FILE"
KEY_ID_RULE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An unknown key id makes the codec read its key file again (a key rotated by another process),
# at most this often.
RELOAD_INTERVAL_SECONDS = 1.0


class KeyRingError(ValueError):
    """The key ring is missing or malformed. The message names where it was read and the rule it
    breaks, never key material."""


class PayloadDecryptionError(ValueError):
    """An encrypted payload cannot be decrypted: unknown key id, altered data or the wrong key."""


@dataclass(frozen=True)
class KeyRing:
    """Data keys by id, and the id new payloads are encrypted with."""

    current: str
    keys: Mapping[str, bytes] = field(repr=False)
    source: str = "the key ring"  # where it was read, for messages

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyRingError(f"{self.source}: the key ring holds no keys")
        for key_id, key in self.keys.items():
            if not KEY_ID_RULE.fullmatch(key_id):
                raise KeyRingError(f"{self.source}: {_key_id_rule()}")
            if len(key) != KEY_BYTES:
                raise KeyRingError(
                    f"{self.source}: key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}"
                )
        if self.current not in self.keys:
            raise KeyRingError(f"{self.source}: the current key {self.current!r} is not in keys")

    @classmethod
    def generate(cls, key_id: str | None = None, source: str = "the key ring") -> KeyRing:
        """A ring with one new random key, current."""
        key_id = key_id or new_key_id(())
        return cls(
            current=key_id, keys={key_id: AESGCM.generate_key(bit_length=256)}, source=source
        )

    def rotated(self, key_id: str | None = None) -> KeyRing:
        """This ring plus a new random key, which becomes current; the old keys stay so that what
        they encrypted still decodes."""
        key_id = key_id or new_key_id(self.keys)
        if key_id in self.keys:
            raise KeyRingError(f"{self.source}: the ring already holds a key {key_id!r}")
        keys = {**self.keys, key_id: AESGCM.generate_key(bit_length=256)}
        return KeyRing(current=key_id, keys=keys, source=self.source)

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyRing:
        try:
            data = json.loads(text)
        except ValueError as err:
            # The parser's message holds a position, never the text itself.
            raise KeyRingError(f"{source}: not valid JSON ({err}); {_shape()}") from None
        if not isinstance(data, dict):
            raise KeyRingError(f"{source}: {_shape()}")
        current, encoded = data.get("current"), data.get("keys")
        if not isinstance(current, str) or not isinstance(encoded, dict) or not encoded:
            raise KeyRingError(f"{source}: {_shape()}")
        keys: dict[str, bytes] = {}
        for number, (key_id, value) in enumerate(encoded.items(), start=1):
            if not KEY_ID_RULE.fullmatch(key_id):
                # The offending id is not shown: it might be a key pasted in the wrong place.
                raise KeyRingError(f"{source}: key number {number}: {_key_id_rule()}")
            if not isinstance(value, str):
                raise KeyRingError(f"{source}: key {key_id!r} must be a base64 string")
            try:
                keys[key_id] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"{source}: key {key_id!r} is not valid base64") from None
        return cls(current=current, keys=keys, source=source)

    def to_json(self) -> str:
        keys = {key_id: base64.b64encode(key).decode() for key_id, key in self.keys.items()}
        return json.dumps({"current": self.current, "keys": keys}, indent=2) + "\n"


def _shape() -> str:
    return 'expected {"current": "<key id>", "keys": {"<key id>": "<base64 of 32 bytes>", ...}}'


def _key_id_rule() -> str:
    return "a key id is 1 to 64 letters, digits, '.', '_' or '-'"


def new_key_id(existing: Sequence[str] | Mapping[str, bytes], now: datetime | None = None) -> str:
    """An id that says when the key was made (`k20260512T103000Z`), unique in `existing`."""
    base = "k" + (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    key_id, n = base, 1
    while key_id in existing:
        n += 1
        key_id = f"{base}-{n}"
    return key_id


# --- where the ring lives ---------------------------------------------------------------------


def key_ring_file(environ: Mapping[str, str] | None = None) -> Path:
    """The key file: `POSFLOW_KEYRING_FILE`, else `keyring.json` in the state directory."""
    env = os.environ if environ is None else environ
    configured = env.get(KEYRING_FILE_ENV)
    return Path(configured) if configured else state_dir() / "keyring.json"


def read_key_ring_file(path: Path) -> KeyRing:
    source = str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyRingError(
            f"{source}: no key file. `posflow up` creates one on its first run, `posflow keys "
            f"init` creates one for a deployment; or set {KEYRING_ENV} to the ring's JSON"
        ) from None
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        raise KeyRingError(
            f"{source}: the key file must be readable by its owner only "
            f"(it is {stat.S_IMODE(mode):04o}; run `chmod 600 {source}`)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise KeyRingError(f"{source}: cannot be read ({type(err).__name__})") from None
    return KeyRing.from_json(text, source)


def load_key_ring(environ: Mapping[str, str] | None = None) -> KeyRing:
    """The ring from `POSFLOW_KEYRING` if set, else from the key file."""
    env = os.environ if environ is None else environ
    inline = env.get(KEYRING_ENV)
    if inline:
        return KeyRing.from_json(inline, f"the environment variable {KEYRING_ENV}")
    return read_key_ring_file(key_ring_file(env))


def write_key_ring_file(ring: KeyRing, path: Path, *, replace: bool = True) -> None:
    """Write the ring atomically, with mode 0600 from the first byte; with `replace=False` an
    existing file is an error instead of being overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".keyring-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(ring.to_json())
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the file exists, even when created concurrently
    except FileExistsError:
        raise KeyRingError(f"{path}: a key file already exists; it is kept as it is") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


def ensure_key_ring(environ: Mapping[str, str] | None = None) -> Path | None:
    """Create the key file with one new key unless a ring is configured already; the path of the
    file created, or None if there was one."""
    env = os.environ if environ is None else environ
    if env.get(KEYRING_ENV):
        return None
    path = key_ring_file(env)
    if path.exists():
        return None
    write_key_ring_file(KeyRing.generate(source=str(path)), path, replace=False)
    return path


# --- the codec --------------------------------------------------------------------------------


class EncryptionCodec(PayloadCodec):
    """Encrypts every payload under the ring's current key; decrypts each with the key it names.

    With `reload`, a payload under a key id the ring does not hold makes the codec load the ring
    again (at most once a second) before giving up: a key rotated by `posflow keys rotate` is
    then readable by processes started before it, and they encrypt with it from then on.
    """

    def __init__(self, ring: KeyRing, reload: Callable[[], KeyRing] | None = None) -> None:
        super().__init__()
        self._reload = reload
        self._reloaded_at = float("-inf")
        self._ciphers: dict[str, AESGCM] = {}
        self.ring = ring

    @classmethod
    def from_environment(cls) -> EncryptionCodec:
        """The codec on the configured ring (see `load_key_ring`), reloading it as needed."""
        return cls(load_key_ring(), reload=load_key_ring)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    @ring.setter
    def ring(self, ring: KeyRing) -> None:
        """Switch rings: new payloads use its current key, old ones still need their keys in it."""
        self._ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._ring.current
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if not is_encrypted(payload):
            return payload
        key_id = key_id_of(payload)
        if not key_id:
            raise PayloadDecryptionError(f"an encrypted payload has no {KEY_ID} in its metadata")
        cipher = self._cipher(key_id)
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(
                f"a payload encrypted with key {key_id!r} is too short ({len(data)} bytes) "
                "to hold a nonce and a tag: it was truncated or altered"
            )
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"a payload encrypted with key {key_id!r} fails authentication: it was altered, "
                f"or the key {key_id!r} in {self._ring.source} is not the one it was made with"
            ) from None
        try:
            return Payload.FromString(plain)
        except DecodeError:
            raise PayloadDecryptionError(
                f"a payload encrypted with key {key_id!r} does not hold a Temporal payload"
            ) from None

    def _cipher(self, key_id: str) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        due = time.monotonic() - self._reloaded_at >= RELOAD_INTERVAL_SECONDS
        if cipher is None and self._reload is not None and due:
            self._reloaded_at = time.monotonic()
            self.ring = self._reload()
            cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"a payload is encrypted with key {key_id!r}, which {self._ring.source} does not "
                f"hold (it holds {', '.join(sorted(self._ring.keys))})"
            )
        return cipher


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get("encoding") == ENCODING


def key_id_of(payload: Payload) -> str:
    return payload.metadata.get(KEY_ID, b"").decode("utf-8", errors="replace")


# --- checking a whole history -----------------------------------------------------------------

# Payloads left in the clear by design, by where they are: the server indexes search attributes
# (which hold nothing personal), headers carry only the stage an activity was scheduled in, and
# the SDK's core writes and reads `workflow.patched` markers (a patch id) itself.
UNENCRYPTED_BY_DESIGN = {
    ".search_attributes": "search attributes",
    ".header": "headers",
    ".details[patch-data]": "patch markers",
}


def unencrypted_by_design(path: str) -> str | None:
    """The kind of payload at `path` (from `payloads_in`) if it is in the clear on purpose."""
    return next((kind for part, kind in UNENCRYPTED_BY_DESIGN.items() if part in path), None)


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every `Payload` inside a proto message, with its field path (`.input.payloads[0]`)."""
    if isinstance(message, Payload):
        yield path, message
        return
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        name = f"{path}.{descriptor.name}"
        if descriptor.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(item, Message):
                    yield from payloads_in(item, f"{name}[{key}]")
        elif descriptor.is_repeated:
            for index, item in enumerate(value):
                yield from payloads_in(item, f"{name}[{index}]")
        else:
            yield from payloads_in(value, name)


@dataclass
class HistoryCheck:
    """What decoding every payload of a history found."""

    workflow_id: str
    events: int = 0
    by_key: Counter[str] = field(default_factory=Counter)  # decoded payloads per key id
    # Payloads not encrypted, per kind: those of `UNENCRYPTED_BY_DESIGN`, and "data" (written
    # before the codec existed, or by a client without it).
    unencrypted: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # where, and why

    @property
    def ok(self) -> bool:
        return not self.failures


def check_history(history: WorkflowHistory, codec: EncryptionCodec) -> HistoryCheck:
    """Decrypt every encrypted payload of `history` (as fetched, undecoded) with `codec`."""
    check = HistoryCheck(history.workflow_id, events=len(history.events))
    for event in history.events:
        for path, payload in payloads_in(event):
            if not is_encrypted(payload):
                check.unencrypted[unencrypted_by_design(path) or "data"] += 1
                continue
            try:
                codec.decrypt(payload)
            except PayloadDecryptionError as err:
                check.failures.append(f"event {event.event_id} {path}: {err}")
            else:
                check.by_key[key_id_of(payload)] += 1
    return check
