"""Personal data is encrypted in Temporal's history: the payload codec, its key ring and rotation,
what a real workflow's history holds, and the Web UI's codec endpoint."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from activities import catalog
from cli.keys import _verify, keys_app
from gateway.codec import allowed_origins, codec_router
from schemas.application import Application
from schemas.status import OnboardingStart, Stage
from tests.factories import individual_application, valid_documents
from tests.scenario import Bench, Run, fast_policy, new_id
from tests.standins import StandIns
from workers.codec import (
    ENCODING,
    KEY_ID,
    KEYRING_ENV,
    KEYRING_FILE_ENV,
    NONCE_BYTES,
    EncryptionCodec,
    KeyRing,
    KeyRingError,
    PayloadDecryptionError,
    check_history,
    ensure_key_ring,
    is_encrypted,
    key_id_of,
    load_key_ring,
    payloads_in,
    unencrypted_by_design,
    write_key_ring_file,
)
from workers.dev_server import DevServer
from workers.temporal import build_replayer, build_worker, data_converter
from workflows.onboarding import PosOnboarding

GOLDEN = Path(__file__).parent / "golden"
UI = "http://127.0.0.1:8233"


def ring(*key_ids: str) -> KeyRing:
    """A ring with a random key per id; the last is current."""
    return KeyRing(
        current=key_ids[-1],
        keys={key_id: os.urandom(32) for key_id in key_ids},
        source="a test ring",
    )


def codec_of(converter: DataConverter) -> EncryptionCodec:
    codec = converter.payload_codec
    assert isinstance(codec, EncryptionCodec)
    return codec


def personal_data(app: Application) -> dict[str, str]:
    """What must never be readable in Temporal: the application's personal numbers and names."""
    data = {
        "identity number": app.legal_representative.id_number,
        "account number": app.settlement_account.account_number,
        "mobile": app.contact.mobile,
        "merchant name": app.merchant.name,
        "legal representative": app.legal_representative.name,
    }
    for document in valid_documents(app):
        if document.number:
            data[f"{document.kind.value} number"] = document.number
    return data


def by_design(path: str) -> bool:
    """Payloads left in the clear on purpose: search attributes, headers, patch markers."""
    return unencrypted_by_design(path) is not None


# --- the codec ----------------------------------------------------------------------------------


async def test_round_trip_encrypts_under_the_current_key_with_a_fresh_nonce() -> None:
    keys = ring("k1")
    converter = data_converter(keys)
    app = individual_application()
    first, second = await converter.encode([app, app])
    for payload in (first, second):
        assert payload.metadata["encoding"] == ENCODING
        assert key_id_of(payload) == "k1"
        assert app.merchant.name.encode() not in payload.data
        assert app.legal_representative.id_number.encode() not in payload.data
    assert first.data[:NONCE_BYTES] != second.data[:NONCE_BYTES]
    assert first.data != second.data
    decoded = await converter.decode([first, second], [Application, Application])
    assert decoded == [app, app]
    # The plaintext is the original payload, metadata included.
    inner = codec_of(converter).decrypt(first)
    assert inner.metadata["encoding"] == b"json/plain"


async def test_payloads_written_before_the_codec_pass_through() -> None:
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'{"stage": "live"}')
    codec = EncryptionCodec(ring("k1"))
    assert await codec.decode([plain]) == [plain]


async def test_a_tampered_payload_fails_to_decode_with_a_clear_error() -> None:
    codec = EncryptionCodec(ring("k1"))
    [payload] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b"1")])
    altered = Payload()
    altered.CopyFrom(payload)
    altered.data = payload.data[:-1] + bytes([payload.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError, match="key 'k1' fails authentication: it was"):
        await codec.decode([altered])
    altered.data = payload.data[:20]
    with pytest.raises(PayloadDecryptionError, match="too short"):
        await codec.decode([altered])
    # The right id on another ring's key: the same refusal, naming the ring.
    impostor = EncryptionCodec(ring("k1"))
    with pytest.raises(PayloadDecryptionError, match="is not the one it was made with"):
        await impostor.decode([payload])


async def test_an_unknown_key_id_fails_clearly() -> None:
    [payload] = await EncryptionCodec(ring("k9")).encode([Payload(data=b"1")])
    codec = EncryptionCodec(ring("k1", "k2"))
    with pytest.raises(PayloadDecryptionError) as refused:
        await codec.decode([payload])
    assert str(refused.value) == (
        "a payload is encrypted with key 'k9', which a test ring does not hold (it holds k1, k2)"
    )
    del payload.metadata[KEY_ID]
    with pytest.raises(PayloadDecryptionError, match="no encryption-key-id"):
        await codec.decode([payload])


# --- the key ring -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("{not json", "not valid JSON"),
        ('["k1"]', 'expected {"current"'),
        ('{"current": "k1", "keys": {}}', 'expected {"current"'),
        ('{"current": "k1", "keys": {"k1": "%%%%"}}', "key 'k1' is not valid base64"),
        ('{"current": "k1", "keys": {"k1": "c2hvcnQ="}}', "key 'k1' is 5 bytes; AES-256 needs 32"),
        ('{"current": "k2", "keys": {"k1": "KEY"}}', "the current key 'k2' is not in keys"),
        ('{"current": "k1", "keys": {"KEY": "KEY"}}', "key number 1: a key id is 1 to 64"),
        ('{"current": "k1", "keys": {"k1": 7}}', "key 'k1' must be a base64 string"),
    ],
)
def test_a_malformed_key_ring_names_its_source_and_the_rule(text: str, rule: str) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    with pytest.raises(KeyRingError) as refused:
        KeyRing.from_json(text.replace("KEY", key), "keys.json")
    message = str(refused.value)
    assert message.startswith("keys.json: ") and rule in message
    assert key not in message


def test_the_key_file_is_created_once_owner_only_and_rotation_keeps_old_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEYRING_ENV)
    monkeypatch.setenv(KEYRING_FILE_ENV, str(tmp_path / "secrets" / "keyring.json"))
    created = ensure_key_ring()
    assert created == tmp_path / "secrets" / "keyring.json"
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    assert ensure_key_ring() is None  # there is one: kept
    first = load_key_ring()
    rotated = first.rotated("k-next")
    write_key_ring_file(rotated, created)
    again = load_key_ring()
    assert again.current == "k-next" and set(again.keys) == {first.current, "k-next"}
    assert again.keys[first.current] == first.keys[first.current]
    assert stat.S_IMODE(created.stat().st_mode) == 0o600
    created.chmod(0o644)
    with pytest.raises(KeyRingError, match="readable by its owner only"):
        load_key_ring()
    # The environment wins over any file, and a missing file says how to make one.
    monkeypatch.setenv(KEYRING_ENV, ring("env-key").to_json())
    assert load_key_ring().current == "env-key"
    assert ensure_key_ring() is None
    monkeypatch.delenv(KEYRING_ENV)
    monkeypatch.setenv(KEYRING_FILE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(KeyRingError, match=r"missing\.json: no key file\. `posflow up` creates"):
        load_key_ring()


async def test_a_key_rotated_elsewhere_is_read_from_the_file_when_first_met(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    write_key_ring_file(ring("k1"), path)
    environ = {KEYRING_FILE_ENV: str(path)}
    stale = EncryptionCodec(load_key_ring(environ), reload=lambda: load_key_ring(environ))
    rotated = load_key_ring(environ).rotated("k2")
    write_key_ring_file(rotated, path)
    [payload] = await EncryptionCodec(rotated).encode([Payload(data=b"new")])
    assert (await stale.decode([payload]))[0].data == b"new"
    assert stale.ring.current == "k2"  # and it encrypts with the new key from now on


def test_keys_commands_never_print_key_material(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEYRING_ENV)
    monkeypatch.setenv(KEYRING_FILE_ENV, str(tmp_path / "keyring.json"))
    runner = CliRunner()
    outputs = []
    for args in (["init"], ["rotate"], ["show"], ["init"]):
        result = runner.invoke(keys_app, args, env={"COLUMNS": "200"})
        outputs.append(result.output)
        assert result.exit_code == (1 if args == ["init"] and len(outputs) == 4 else 0), result
    keys = load_key_ring()
    assert len(keys.keys) == 2
    shown = outputs[2]
    for key_id, key in keys.keys.items():
        assert key_id in shown
        assert base64.b64encode(key).decode() not in "".join(outputs)
    assert f"{keys.current}    current" in shown
    assert "already exists" in outputs[3]
    # A ring given in the environment is not the command's to rotate.
    monkeypatch.setenv(KEYRING_ENV, keys.to_json())
    result = runner.invoke(keys_app, ["rotate"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "POSFLOW_KEYRING" in result.output


# --- a real workflow's history ------------------------------------------------------------------


async def start(
    env: WorkflowEnvironment, client: Client, app: Application, queue: str, unit: timedelta
) -> Run:
    """A run started by `client` (whose data converter encrypts its input)."""
    policy = fast_policy(app, unit)
    handle = await client.start_workflow(
        PosOnboarding.run,
        OnboardingStart(application=app, policy=policy),
        id=app.workflow_id,
        task_queue=queue,
    )
    return Run(env, handle, app, policy)


@pytest.fixture
async def raw_client(env: WorkflowEnvironment) -> AsyncIterator[Client]:
    """A client of the same server without the codec: it sees what Temporal stores."""
    yield Client(env.client.service_client, namespace=env.client.namespace)


async def test_a_workflows_history_holds_no_personal_data(
    env: WorkflowEnvironment, raw_client: Client, unit: timedelta
) -> None:
    app = individual_application(application_id=new_id())
    queue = f"codec-{new_id()}"
    async with build_worker(env.client, queue, StandIns().activities()):
        run = await start(env, env.client, app, queue, unit)
        await run.to(Stage.LIVE)
        await run.outcome()
    history = await raw_client.get_workflow_handle(app.workflow_id).fetch_history()
    raw = History(events=history.events).SerializeToString()
    for what, value in personal_data(app).items():
        assert value.encode() not in raw, f"the {what} is readable in the history"
    encrypted = 0
    for event in history.events:
        for path, payload in payloads_in(event):
            if by_design(path):
                continue
            assert is_encrypted(payload), f"event {event.event_id} {path} is not encrypted"
            assert key_id_of(payload) == "test-1"
            encrypted += 1
    assert encrypted > 20  # inputs, results, updates and their answers, activities
    # The same history, decoded with the ring, replays.
    replay = await build_replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert replay.replay_failure is None


async def test_failure_messages_are_encrypted_too(bench: Bench, raw_client: Client) -> None:
    app = individual_application(application_id=new_id())
    # A service whose refusal quotes the merchant: the message must not reach the history.
    bench.services.refuse(catalog.RESERVE_TERMINALS, f"no terminal for {app.merchant.name}")
    run = await bench.start(app)
    await run.to(Stage.PREPARING_DEVICES)
    status = await run.parked()
    assert status.attention is not None and app.merchant.name in status.attention.reason
    history = await raw_client.get_workflow_handle(app.workflow_id).fetch_history()
    events = History(events=history.events).events  # a copy
    failed = [e for e in events if e.HasField("activity_task_failed_event_attributes")]
    assert failed
    for event in failed:
        failure = event.activity_task_failed_event_attributes.failure
        assert failure.message == "Encoded failure" and not failure.stack_trace
        assert is_encrypted(failure.encoded_attributes)
        # The error's type is a code for the workflow to branch on, and is never encrypted: this
        # stand-in puts the service's refusal code there, which a real service must keep
        # impersonal.
        failure.application_failure_info.type = ""
    assert app.merchant.name.encode() not in History(events=events).SerializeToString()


async def test_rotation_in_the_middle_of_a_run(
    env: WorkflowEnvironment, raw_client: Client, unit: timedelta, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = ring("k-old")
    after = before.rotated("k-new")
    converter = data_converter(before)
    codec = codec_of(converter)
    client = Client(env.client.service_client, namespace=env.client.namespace,
                    data_converter=converter)  # fmt: skip
    app = individual_application(application_id=new_id())
    queue = f"codec-{new_id()}"
    async with build_worker(client, queue, StandIns().activities()):
        run = await start(env, client, app, queue, unit)
        await run.to(Stage.CONTRACT)
        codec.ring = after  # the worker and the client now encrypt with the new key
        await run.to(Stage.LIVE)
        outcome = await run.outcome()
    assert outcome.stage is Stage.LIVE

    history = await raw_client.get_workflow_handle(app.workflow_id).fetch_history()
    check = check_history(history, EncryptionCodec(after))
    assert check.ok, check.failures
    assert check.by_key["k-old"] > 5 and check.by_key["k-new"] > 5
    assert "data" not in check.unencrypted
    replay = await build_replayer(data_converter(after)).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert replay.replay_failure is None
    # Without the new key, its payloads are named as undecodable.
    partial = check_history(history, EncryptionCodec(before))
    assert partial.by_key == {"k-old": check.by_key["k-old"]}
    assert len(partial.failures) == check.by_key["k-new"]
    assert "'k-new', which a test ring does not hold" in partial.failures[0]

    # `posflow keys verify` reads the same from the server.
    monkeypatch.setenv(KEYRING_ENV, after.to_json())
    monkeypatch.setenv("TEMPORAL_ADDRESS", env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", env.client.namespace)
    verified = await _verify(app.workflow_id, None)
    assert verified.by_key == check.by_key and verified.ok


def encrypt_history(history: WorkflowHistory, codec: EncryptionCodec, switch_at: int = 0,
                    then: KeyRing | None = None) -> WorkflowHistory:  # fmt: skip
    """The history as if the codec had written it (from event `switch_at`, with ring `then`)."""
    events = History(events=history.events).events  # a copy
    for event in events:
        if then is not None and switch_at and event.event_id == switch_at:
            codec.ring = then
        for path, payload in payloads_in(event):
            if not by_design(path):
                payload.CopyFrom(codec.encrypt(payload))
    return WorkflowHistory(history.workflow_id, list(events))


async def test_golden_histories_replay_plain_and_encrypted_across_a_rotation() -> None:
    path = GOLDEN / "before_notices" / "individual_mail_live.json"  # recorded in plain
    plain = WorkflowHistory.from_json(f"pos-application-{path.stem}", path.read_text())
    before = ring("k1")
    after = before.rotated("k2")
    middle = len(plain.events) // 2
    encrypted = encrypt_history(plain, EncryptionCodec(before), middle, after)
    check = check_history(encrypted, EncryptionCodec(after))
    assert check.ok and check.by_key["k1"] > 0 and check.by_key["k2"] > 0
    for history in (plain, encrypted):
        result = await build_replayer(data_converter(after)).replay_workflow(
            history, raise_on_replay_failure=False
        )
        assert result.replay_failure is None


# --- the Web UI's codec endpoint ----------------------------------------------------------------


def denied() -> None:
    raise HTTPException(401, "sign in")


@pytest.fixture
async def codec_api() -> AsyncIterator[tuple[httpx.AsyncClient, EncryptionCodec]]:
    codec = EncryptionCodec(ring("k1"))
    app = FastAPI()
    app.include_router(codec_router(codec, UI, namespace="default"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        yield http, codec


def as_json(payloads: list[Payload]) -> dict[str, object]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def from_json(body: object) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


UI_HEADERS = {"Origin": UI, "X-Namespace": "default"}


async def test_the_codec_endpoint_decodes_what_the_codec_encoded(
    codec_api: tuple[httpx.AsyncClient, EncryptionCodec],
) -> None:
    http, codec = codec_api
    original = Payload(metadata={"encoding": b"json/plain"}, data='{"a": "张三"}'.encode())
    encrypted = await codec.encode([original])
    answer = await http.post("/codec/decode", json=as_json(encrypted), headers=UI_HEADERS)
    assert answer.status_code == 200, answer.text
    assert from_json(answer.json()) == [original]
    assert answer.headers["access-control-allow-origin"] == UI
    assert answer.headers["access-control-allow-credentials"] == "true"

    answer = await http.post("/codec/encode", json=as_json([original]), headers=UI_HEADERS)
    assert answer.status_code == 200
    [sealed] = from_json(answer.json())
    assert is_encrypted(sealed) and await codec.decode([sealed]) == [original]

    tampered = Payload()
    tampered.CopyFrom(encrypted[0])
    tampered.data = tampered.data[:-1] + bytes([tampered.data[-1] ^ 1])
    answer = await http.post("/codec/decode", json=as_json([tampered]), headers=UI_HEADERS)
    assert answer.status_code == 422
    assert answer.json()["error"] == "undecodable_payload"
    assert "fails authentication" in answer.json()["message"]

    refusals = [
        ({"Origin": "http://evil.example"}, as_json(encrypted), 403, "origin_not_allowed"),
        ({"X-Namespace": "other"}, as_json(encrypted), 400, "wrong_namespace"),
        ({}, {"payloads": [{"data": "not base64!"}]}, 400, "invalid_payloads"),
    ]
    for headers, body, status, error in refusals:
        answer = await http.post("/codec/decode", json=body, headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (status, error)
    answer = await http.post("/codec/decode", content=b"{}", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 415


async def test_the_codec_endpoint_answers_the_uis_preflight_outside_the_admin_guard() -> None:
    app = FastAPI()
    router = codec_router(EncryptionCodec(ring("k1")), UI)
    app.include_router(router, dependencies=[Depends(denied)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        for origin in (UI, "http://localhost:8233"):
            answer = await http.options(
                "/codec/decode",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
                },
            )
            assert answer.status_code == 204
            assert answer.headers["access-control-allow-origin"] == origin
            assert answer.headers["access-control-allow-credentials"] == "true"
            allowed = answer.headers["access-control-allow-headers"].lower()
            assert {"authorization", "content-type", "x-namespace"} <= {
                h.strip() for h in allowed.split(",")
            }
            assert "POST" in answer.headers["access-control-allow-methods"]
        answer = await http.options(
            "/codec/encode",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert answer.status_code == 403
        assert "access-control-allow-origin" not in answer.headers
        # The guard still holds the data routes.
        answer = await http.post("/codec/decode", json={"payloads": []}, headers=UI_HEADERS)
        assert answer.status_code == 401


def test_the_ui_origin_is_its_url_without_a_path() -> None:
    assert allowed_origins("http://127.0.0.1:8233/") == {
        "http://127.0.0.1:8233",
        "http://localhost:8233",
    }
    assert allowed_origins(["https://temporal.example.com/ui"]) == {"https://temporal.example.com"}
    with pytest.raises(ValueError):
        allowed_origins("temporal-ui")


def test_the_dev_server_points_the_web_ui_at_the_codec_endpoint() -> None:
    endpoint = "http://127.0.0.1:8000/codec"
    command = DevServer(executable=Path("temporal"), ui_codec_endpoint=endpoint).command()
    assert command[command.index("--ui-codec-endpoint") + 1] == endpoint
    assert "--ui-codec-endpoint" not in DevServer(executable=Path("temporal")).command()
    headless = DevServer(executable=Path("temporal"), headless=True, ui_codec_endpoint=endpoint)
    assert "--ui-codec-endpoint" not in headless.command()


def test_the_tests_use_their_own_key_ring() -> None:
    keys = json.loads(os.environ[KEYRING_ENV])
    assert keys["current"] == "test-1"
    assert KEYRING_FILE_ENV not in os.environ
