"""The channel profiles (schemas/channels.py): valid at import, a broken one refused with its field
named, the policy defaults derived from them, the documents they ask, and the gateway refusing at
submission what a channel does not offer, before anything starts."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.documents import check_documents, required_documents
from cli.samples import sample
from gateway.app import SIGNERS, GatewaySettings, create_app
from gateway.routes.merchant import tmall_store_check
from schemas.application import Application, Channel, DeviceOrder, Fulfilment
from schemas.channels import _PROFILES, PROFILES, ChannelProfile, load_profiles, profile_for
from schemas.documents import Document, DocumentKind, IssueCode
from schemas.policy import policy_for
from schemas.status import OnboardingStart
from services.device import SEED_MODELS
from tests.factories import INDIVIDUAL_NAME, TODAY, individual_application, valid_documents
from tests.servers import serving

ADMIN = "admin-token"
CATALOGUE = [code for code, _, _ in SEED_MODELS]
TMALL_STORE = "北京市海淀区张三便利店旗舰店"


def channel_application(channel: Channel, **overrides: Any) -> Application:
    """A valid application on `channel`: its first model and fulfilment, its prerequisites."""
    profile = profile_for(channel)
    fields: dict[str, Any] = {
        "application_id": f"C{uuid.uuid4().hex[:10]}",
        "channel": channel,
        "device_order": DeviceOrder(model=profile.devices.models[0], quantity=1),
        "fulfilment": profile.fulfilment.allowed[0],
    }
    if profile.documents.tmall_store:
        fields["tmall_store"] = TMALL_STORE
    return individual_application(**{**fields, **overrides})


# --- the profiles themselves -------------------------------------------------------------------


def test_every_channel_has_a_valid_profile_offering_catalogue_models() -> None:
    assert set(PROFILES) == set(Channel)
    for channel, profile in PROFILES.items():
        assert profile.channel is channel
        assert ChannelProfile.model_validate(profile.model_dump()) == profile
        # Every model a channel offers is one the device service stocks.
        assert set(profile.devices.models) <= set(CATALOGUE), channel
        assert profile.review.sla <= profile.review.deadline


def test_tmall_and_alipay_differ_where_the_sources_say() -> None:
    tmall, alipay = profile_for(Channel.TMALL), profile_for(Channel.ALIPAY)
    assert tmall.documents.tmall_store and not alipay.documents.tmall_store
    assert Fulfilment.ON_SITE in tmall.fulfilment.allowed  # Tmall's installation team
    assert alipay.fulfilment.allowed == [Fulfilment.MAIL]  # 邮寄至商户指定地址
    assert tmall.training != alipay.training
    # A free terminal is a profile: no deposit on the platforms, a deposit at a bank and Lakala.
    assert tmall.fees.free_terminal and alipay.fees.free_terminal
    assert not profile_for(Channel.BANK).fees.free_terminal
    assert profile_for(Channel.BANK).devices.banks  # 选择银行
    assert Fulfilment.PICK_UP in profile_for(Channel.LAKALA).fulfilment.allowed  # 领取
    assert all(
        Fulfilment.PICK_UP not in profile_for(c).fulfilment.allowed
        for c in (Channel.BANK, Channel.TMALL, Channel.ALIPAY)
    )


def _broken(channel: str, path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_PROFILES[channel])
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("channel", "path", "value", "named"),
    [
        ("bank", ("fees", "card_rate_percent"), "-0.60", "fees.card_rate_percent"),
        ("lakala", ("fees", "deposit"), "99.999", "fees.deposit"),
        ("tmall", ("fulfilment", "allowed"), [], "fulfilment.allowed"),
        ("alipay", ("fulfilment", "allowed"), ["drone"], "fulfilment.allowed.0"),
        ("alipay", ("devices", "models"), [], "devices.models"),
        ("lakala", ("training", "sessions"), 0, "training.sessions"),
        ("tmall", ("review", "sla"), "P30D", "review"),
        ("bank", ("devices", "banks"), [], "devices.banks"),
        ("tmall", ("documents", "industry_licence_categories"), ["fireworks"], "documents"),
        ("bank", ("fees", "card_rate"), "0.60", "fees.card_rate"),  # a misspelt field
    ],
)
def test_a_broken_profile_is_refused_naming_its_field(
    channel: str, path: tuple[str, ...], value: Any, named: str
) -> None:
    data = {**_PROFILES, channel: _broken(channel, path, value)}
    with pytest.raises(ValidationError) as refused:
        load_profiles(data)
    text = str(refused.value)
    assert named in text, text


def test_a_profile_under_another_channel_or_a_missing_one_is_refused() -> None:
    with pytest.raises(ValueError, match="profile under alipay is for channel tmall"):
        load_profiles({**_PROFILES, "alipay": _PROFILES["tmall"]})
    with pytest.raises(ValueError, match="no channel profile for"):
        load_profiles({k: v for k, v in _PROFILES.items() if k != "lakala"})


@pytest.mark.parametrize("channel", list(Channel))
def test_the_policy_defaults_are_the_profiles_figures(channel: Channel) -> None:
    profile, policy = profile_for(channel), policy_for(channel)
    assert policy.review_sla == profile.review.sla
    assert policy.review_deadline == profile.review.deadline
    assert policy.deposit_amount == profile.fees.deposit
    assert policy.deposit_due is not profile.fees.free_terminal
    assert policy.merchant.annual_fee == profile.fees.annual_fee
    assert policy.merchant.service_fee_per_terminal == profile.fees.service_fee_per_terminal
    assert policy.merchant.rebinding_review is profile.review.rebinding_review


def test_the_figures_are_those_of_before_the_profiles() -> None:
    assert policy_for(Channel.BANK).deposit_amount == Decimal("299.00")
    assert policy_for(Channel.LAKALA).merchant.annual_fee == Decimal("365.00")
    assert policy_for(Channel.TMALL).merchant.service_fee_per_terminal == Decimal("36.00")
    assert not policy_for(Channel.ALIPAY).deposit_due


# --- documents ---------------------------------------------------------------------------------


def _industry_licence(holder: str = INDIVIDUAL_NAME, number: str = "JY11101080012345") -> Document:
    return Document(
        kind=DocumentKind.INDUSTRY_LICENCE,
        file_id="file-industry",
        number=number,
        holder_name=holder,
    )


@pytest.mark.parametrize("channel", list(Channel))
def test_a_regulated_category_without_its_industry_licence_has_it_outstanding(
    channel: Channel,
) -> None:
    app = channel_application(channel)
    app.merchant.business_category = "food"
    assert DocumentKind.INDUSTRY_LICENCE in required_documents(app)
    report = check_documents(app, valid_documents(app), today=TODAY)
    assert report.missing == [DocumentKind.INDUSTRY_LICENCE] and not report.complete
    report = check_documents(app, [*valid_documents(app), _industry_licence()], today=TODAY)
    assert report.complete, report


def test_the_industry_licence_is_checked_like_the_other_documents() -> None:
    app = channel_application(Channel.TMALL)
    app.merchant.business_category = "Pharmacy"  # categories are compared in lower case
    documents = [*valid_documents(app), _industry_licence(holder="别人药店", number="京A-1")]
    report = check_documents(app, documents, today=TODAY)
    fields = {issue.field: issue for issue in report.issues}
    number = fields["documents.industry_licence.number"]
    assert number.code is IssueCode.INVALID_FORMAT and "药品经营许可证" in number.message
    assert fields["documents.industry_licence.holder_name"].code is IssueCode.NAME_MISMATCH
    # A province abbreviation in front is part of many licence numbers.
    documents = [*valid_documents(app), _industry_licence(number="京AA0100001")]
    assert check_documents(app, documents, today=TODAY).complete


def test_an_unregulated_category_needs_no_industry_licence() -> None:
    app = channel_application(Channel.BANK)
    assert DocumentKind.INDUSTRY_LICENCE not in required_documents(app)
    report = check_documents(app, [*valid_documents(app), _industry_licence()], today=TODAY)
    assert [i.code for i in report.issues] == [IssueCode.NOT_APPLICABLE]


def test_training_is_declined_only_where_the_channel_makes_it_optional() -> None:
    alipay = individual_application(channel=Channel.ALIPAY, decline_training=True)
    assert profile_for(Channel.ALIPAY).submission_issues(alipay) == []
    bank = individual_application(channel=Channel.BANK, decline_training=True)
    (issue,) = profile_for(Channel.BANK).submission_issues(
        bank.model_copy(update={"acquiring_bank": "招商银行", "fulfilment": Fulfilment.ON_SITE})
    )
    assert issue.field == "decline_training" and "requires operating training" in issue.message
    assert policy_for(Channel.ALIPAY).training_required is False
    assert policy_for(Channel.TMALL).training_sessions == 2
    assert policy_for(Channel.ALIPAY).card_rate_percent == Decimal("0.38")


# --- the demo's applications -------------------------------------------------------------------


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("category", ["retail", "food", "pharmacy"])
def test_the_demo_generates_applications_valid_under_each_profile(
    channel: Channel, category: str
) -> None:
    for seed in range(40):
        generated = sample(seed, channel=channel, category=category)
        app = generated.application
        assert app.channel is channel
        assert profile_for(channel).submission_issues(app) == []
        assert tmall_store_check(app) is None
        report = check_documents(app, generated.documents, today=TODAY)
        assert report.complete, (seed, report)


# --- at the gateway: refused before anything starts ---------------------------------------------


@pytest.fixture
async def gateway(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(
        database_url=f"sqlite:///{tmp_path / 'gateway.db'}",
        task_queue=f"channels-{uuid.uuid4().hex[:8]}",
        secrets={s: f"{s}-secret" for s in SIGNERS},
        tokens={ADMIN: "admin"},
        merchant_keys={"merchant-key": "all"},
    )
    async with (
        serving(create_app(env.client, settings)) as url,
        httpx.AsyncClient(
            base_url=url, timeout=20, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as http,
    ):
        yield http


async def refused_and_nothing_started(
    http: httpx.AsyncClient, env: WorkflowEnvironment, app: Application, field: str
) -> str:
    """Posts `app`, expects 422 naming `field`, and that no workflow and no row exist."""
    response = await http.post("/api/applications", json=app.model_dump(mode="json"))
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_application" and field in error["fields"], error
    with pytest.raises(RPCError) as missing:
        await env.client.get_workflow_handle(app.workflow_id).describe()
    assert missing.value.status is RPCStatusCode.NOT_FOUND
    listed = (await http.get("/api/applications")).json()
    assert app.application_id not in [row["application_id"] for row in listed]
    return str(error["fields"][field])


async def test_a_model_the_channel_does_not_offer_is_refused_at_submission(
    gateway: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    for channel, profile in PROFILES.items():
        elsewhere = [m for m in CATALOGUE if m not in profile.devices.models]
        for model in [*elsewhere, "NOKIA-3310"]:
            app = channel_application(channel, device_order=DeviceOrder(model=model, quantity=1))
            message = await refused_and_nothing_started(gateway, env, app, "device_order.model")
            assert model in message and all(m in message for m in profile.devices.models)
        # The same application with a model it offers starts.
        app = channel_application(channel)
        response = await gateway.post("/api/applications", json=app.model_dump(mode="json"))
        assert response.status_code == 201, response.text


async def test_fulfilment_and_bank_outside_the_profile_are_refused(
    gateway: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    app = channel_application(Channel.ALIPAY, fulfilment=Fulfilment.ON_SITE)
    message = await refused_and_nothing_started(gateway, env, app, "fulfilment")
    assert "on_site" in message and "mail" in message
    app = channel_application(Channel.BANK, acquiring_bank="某某村镇银行")
    message = await refused_and_nothing_started(gateway, env, app, "acquiring_bank")
    assert "中国工商银行" in message
    app = channel_application(Channel.LAKALA, acquiring_bank="中国工商银行")
    await refused_and_nothing_started(gateway, env, app, "acquiring_bank")
    app = channel_application(Channel.BANK, acquiring_bank="招商银行")
    response = await gateway.post("/api/applications", json=app.model_dump(mode="json"))
    assert response.status_code == 201, response.text


async def test_a_tmall_application_names_an_open_store_the_platform_knows(
    gateway: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    app = channel_application(Channel.TMALL, tmall_store=None)
    await refused_and_nothing_started(gateway, env, app, "tmall_store")
    app = channel_application(Channel.TMALL, tmall_store="   ")  # spaces read as not given
    await refused_and_nothing_started(gateway, env, app, "tmall_store")
    app = channel_application(Channel.TMALL, tmall_store="张三的小店")
    message = await refused_and_nothing_started(gateway, env, app, "tmall_store")
    assert "旗舰店" in message
    app = channel_application(Channel.TMALL, tmall_store="张三[closed]旗舰店")
    assert "closed" in await refused_and_nothing_started(gateway, env, app, "tmall_store")
    app = channel_application(Channel.ALIPAY, tmall_store=TMALL_STORE)
    await refused_and_nothing_started(gateway, env, app, "tmall_store")
    app = channel_application(Channel.TMALL)
    response = await gateway.post("/api/applications", json=app.model_dump(mode="json"))
    assert response.status_code == 201, response.text
    # An application without the new fields is fingerprinted as before: a resend is a retry.
    again = await gateway.post("/api/applications", json=app.model_dump(mode="json"))
    assert again.status_code == 200, again.text


async def test_a_regulated_application_starts_needing_its_industry_licence(
    gateway: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    app = channel_application(Channel.LAKALA)
    app.merchant.business_category = "tobacco"
    response = await gateway.post("/api/applications", json=app.model_dump(mode="json"))
    assert response.status_code == 201, response.text
    # The workflow captures the documents it needs at start (outstanding until filed).
    history = await env.client.get_workflow_handle(app.workflow_id).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    [start] = await env.client.data_converter.decode(payloads, [OnboardingStart])
    assert DocumentKind.INDUSTRY_LICENCE in start.required_documents
