"""Each channel's profile drives a whole application on the real stack (dev server, worker,
sandbox services, gateway, over HTTP): its documents, its model and fulfilment (a Lakala merchant
collects at a branch), its deposit and card rate on the contract, its training (Tmall two
sessions, Alipay declined), and the notices the merchant receives. The merchant activates each
terminal with the code the activation notice gave, as a real merchant reads it from the SMS.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import httpx

from schemas.application import Application, Channel, Fulfilment
from schemas.channels import profile_for
from schemas.documents import Document, DocumentKind
from services.notification import TEMPLATES, personal_number
from tests.factories import valid_documents
from tests.stack import Stack, new_application


@dataclass
class Case:
    channel: Channel
    fulfilment: Fulfilment
    overrides: dict[str, Any]
    category: str = "retail"


CASES = [
    Case(Channel.BANK, Fulfilment.ON_SITE, {"acquiring_bank": "招商银行"}),
    Case(Channel.LAKALA, Fulfilment.PICK_UP, {}, category="food"),
    Case(Channel.TMALL, Fulfilment.MAIL, {"tmall_store": "好运来便利旗舰店"}),
    Case(Channel.ALIPAY, Fulfilment.MAIL, {"decline_training": True}),
]
DISPATCH = {
    Fulfilment.MAIL: "shipped",
    Fulfilment.ON_SITE: "installation_booked",
    Fulfilment.PICK_UP: "pick_up_ready",
}


def application_for(case: Case) -> tuple[Application, list[dict[str, Any]]]:
    app = new_application(channel=case.channel, fulfilment=case.fulfilment, **case.overrides)
    app = app.model_copy(
        update={"merchant": app.merchant.model_copy(update={"business_category": case.category})}
    )
    documents = valid_documents(app)
    if profile_for(case.channel).industry_licence_needed(case.category):
        documents.append(
            Document(
                kind=DocumentKind.INDUSTRY_LICENCE,
                file_id="food-licence-scan",
                number="JY13301060123456",
                holder_name=app.merchant.name,
                expires_on=date(2031, 12, 31),
            )
        )
    return app, [d.model_dump(mode="json") for d in documents]


async def notices(stack: Stack, app: Application) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.served["notification"].url) as http:
        response = await http.get("/notices", params={"application_id": app.application_id})
    return sorted(response.json()["notices"], key=lambda n: n["created_at"])


async def activate_from_the_notice(stack: Stack, app: Application) -> None:
    """The merchant types each code the activation notice gave into the terminal it names."""
    status = await stack.until(app, "activating")
    for _ in range(200):
        sent = [n for n in await notices(stack, app) if n["notice"] == "activation_codes"]
        if sent:
            break
        await asyncio.sleep(0.05)
    (notice,) = sent
    codes = dict(re.findall(r"终端(\w{4})：(\w+)", notice["fields"]["codes"]))
    assert len(codes) == len(status["terminals"])
    async with httpx.AsyncClient(base_url=stack.served["device"].url) as http:
        for terminal in status["terminals"]:
            serial = terminal["serial"]
            response = await http.post(
                f"/terminals/{serial}/activation",
                json={"code": codes[serial[-4:]]},
                headers={"Idempotency-Key": f"activate-{serial}-{app.application_id}"},
            )
            assert response.is_success, response.text


async def go_live(stack: Stack, case: Case) -> tuple[Application, dict[str, Any]]:
    app, documents = application_for(case)
    await stack.start(app)
    filed = await stack.submit(app, documents)
    assert filed.status_code == 200 and filed.json()["complete"], filed.text
    await activate_from_the_notice(stack, app)
    return app, await stack.until(app, "live", seconds=90)


async def test_each_channel_runs_as_its_profile_says(stack: Stack) -> None:
    results = await asyncio.gather(*(go_live(stack, case) for case in CASES))
    for case, (app, status) in zip(CASES, results, strict=True):
        profile = profile_for(case.channel)
        where = case.channel.value
        # The contract: the channel's deposit and card rate.
        async with httpx.AsyncClient(base_url=stack.served["contract"].url) as http:
            contract = (await http.get(f"/contracts/{status['contract']['contract_id']}")).json()
        assert Decimal(contract["deposit_amount"]) == profile.fees.deposit, where
        assert Decimal(contract["card_rate_percent"]) == profile.fees.card_rate_percent, where
        assert status["contract"]["card_rate_percent"] == str(profile.fees.card_rate_percent)
        # The terminals came the channel's way.
        kinds = {"shipment", "installation", "pick_up"}
        came = {kind for kind in kinds if status[kind] is not None}
        expected = {Fulfilment.MAIL: "shipment", Fulfilment.ON_SITE: "installation"}
        assert came == {expected.get(case.fulfilment, "pick_up")}, where
        async with httpx.AsyncClient(base_url=stack.served["logistics"].url) as http:
            if case.fulfilment is Fulfilment.PICK_UP:
                held = (await http.get(f"/pickups/{status['pick_up']['pickup_id']}")).json()
                assert held["status"] == "done" and status["pick_up"]["collected_at"], where
            # Training: the profile's sessions, or none when declined.
            session = status["training_session_id"]
            if case.overrides.get("decline_training"):
                assert session is None, where
            else:
                trained = (await http.get(f"/trainings/{session}")).json()
                assert trained["sessions"] == trained["sessions_done"] == profile.training.sessions
        on_file = status["documents"]["on_file"]
        assert ("industry_licence" in on_file) == (case.category == "food"), where
        # What the merchant heard, in order, each in full and with no personal number.
        for _ in range(100):
            sent = await notices(stack, app)
            if sent and sent[-1]["notice"] == "went_live":
                break
            await asyncio.sleep(0.1)
        heard = [n["notice"] for n in sent]
        trained_notice = [] if case.overrides.get("decline_training") else ["training_booked"]
        assert heard == [
            "received",
            "contract_ready",
            DISPATCH[case.fulfilment],
            "activation_codes",
            *trained_notice,
            "went_live",
        ], where
        if case.fulfilment is Fulfilment.PICK_UP:
            # The merchant's page (the link in the notice) says where the terminals were held.
            async with httpx.AsyncClient() as browser:
                page = await browser.get(sent[-1]["text"].partition(" 查看进度：")[2])
            assert "网点领取" in page.text and status["pick_up"]["branch"] in page.text
        for notice in sent:
            assert set(notice["fields"]) == set(TEMPLATES[notice["notice"]].fields)
            body = notice["text"].partition(" 查看进度：")[0]
            assert app.contact.mobile not in notice["text"]
            assert personal_number(body, ours=(app.application_id, status["mid"])) is None
