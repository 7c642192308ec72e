"""The merchant-facing API: start an application, file its documents, read its status.

Callers: a merchant front end with its channel's key (`X-Api-Key`), which sees only its
channel's applications, or operations with a token (status: viewer; start and documents: admin).
Only an admin may override the policy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.documents import required_documents, validate_application
from gateway.auth import Principal, merchant_or_staff, refuse
from gateway.errors import (
    COMMON,
    MERCHANT,
    TEMPORAL_UNAVAILABLE,
    UNAVAILABLE,
    ApiError,
    described,
    start_refused,
    unknown_application,
)
from gateway.forwarding import Forwarded, Forwarder, describe_submission
from gateway.limits import ApplicationId
from gateway.models import Started, StartRequest
from gateway.resources import ClientDep, ForwarderDep, SettingsDep, StoreDep, workflow
from gateway.settings import GatewaySettings
from gateway.store import ApplicationRecord, Store
from schemas.application import Application, Channel
from schemas.channels import profile_for
from schemas.documents import DocumentSubmission, FieldIssue, IssueCode
from schemas.messages import SubmissionResult
from schemas.policy import Policy, policy_for
from schemas.status import ApplicationStatus, OnboardingStart
from workers.logging import mask_text, masked
from workflows.case import CHINA
from workflows.onboarding import PosOnboarding

merchant_or_viewer = merchant_or_staff("viewer")
merchant_or_admin = merchant_or_staff("admin")

router = APIRouter(
    prefix="/api/applications",
    tags=["merchant"],
    dependencies=[Depends(merchant_or_viewer)],
    responses={**MERCHANT, **COMMON},
)
MerchantOrViewer = Annotated[Principal, Depends(merchant_or_viewer)]
MerchantOrAdmin = Annotated[Principal, Depends(merchant_or_admin)]


async def no_policy_unless_admin(request: Request, caller: MerchantOrAdmin) -> None:
    """A policy override needs the admin role: refused (403) before the body is looked at."""
    try:
        data = await request.json()
    except ValueError:
        return  # answered 422 by validation
    if isinstance(data, dict) and data.get("policy") is not None and not caller.allows("admin"):
        raise refuse(request, 403, "forbidden", "overriding the policy needs the admin role")


# Application fields added later: left out of the fingerprint while absent, so an application
# started before they existed is recognised when sent again.
_LATER_FIELDS = ("tmall_store", "acquiring_bank", "decline_training", "request_site_survey")


def fingerprint(application: Application, policy: Policy) -> str:
    """The same for the same application and policy, whoever sends them and in which key order."""
    data = application.model_dump(mode="json")
    for name in _LATER_FIELDS:
        if data.get(name) is None:
            data.pop(name, None)
    canonical = json.dumps(
        {"application": masked(data), "policy": policy.model_dump(mode="json")},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# The sandbox Tmall platform (天猫商家后台), as a deterministic rule: a store it knows is named
# as Tmall names its three kinds of store (旗舰店 flagship, 专卖店 brand, 专营店 multi-brand);
# one whose name carries the demo marker [closed] has closed. A real platform would be asked
# over HTTP here, with the same answers.
TMALL_STORE_KINDS = ("旗舰店", "专卖店", "专营店")
TMALL_CLOSED_MARKER = "[closed]"


def tmall_store_check(application: Application) -> FieldIssue | None:
    """The platform's word on a Tmall application's store (None when it is open, or when the
    application names none: a missing store is the profile's issue)."""
    store = application.tmall_store
    if application.channel is not Channel.TMALL or not store:
        return None
    if TMALL_CLOSED_MARKER in store:
        message = "the Tmall store is closed on the platform: only an open store applies"
    elif not store.endswith(TMALL_STORE_KINDS):
        message = (
            "the Tmall platform has no such store: give the store's name as on Tmall, ending in "
            + ", ".join(TMALL_STORE_KINDS)
        )
    else:
        return None
    return FieldIssue(field="tmall_store", code=IssueCode.NOT_APPLICABLE, message=message)


def _reused(application_id: str) -> ApiError:
    return ApiError(
        409,
        "application_id_reused",
        f"application {application_id} was started with a different application or policy: "
        "use a new application_id for a different application",
    )


@router.post(
    "",
    status_code=201,
    response_model=Started,
    summary="Start an application",
    dependencies=[Depends(merchant_or_admin), Depends(no_policy_unless_admin)],
    responses={
        200: {"model": Started, "description": "started before with the same body: a retry"},
        409: described("this application_id was started with a different body"),
        422: described("invalid fields (checksums included) or policy overrides out of bounds"),
        **UNAVAILABLE,
    },
)
async def start_application(
    body: StartRequest,
    caller: MerchantOrAdmin,
    client: ClientDep,
    store: StoreDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Start the application's workflow. 422 names every bad field before anything starts; the
    same `application_id` again is answered 200 (`created: false`) with the same body and 409
    with another one."""
    application = body.application()
    if not caller.may_see(application.channel.value):
        raise ApiError(403, "forbidden", f"this merchant key is for channel {caller.merchant}")
    issues = validate_application(application, today=datetime.now(CHINA).date())
    # The channel's profile: its models, fulfilment, banks and prerequisites, checked before
    # anything starts (not after the merchant has paid the deposit).
    issues += profile_for(application.channel).submission_issues(application)
    store_issue = tmall_store_check(application)
    if store_issue is not None:
        issues.append(store_issue)
    if issues:
        raise ApiError(
            422,
            "invalid_application",
            "the application has invalid fields",
            {i.field: i.message for i in issues},
        )
    try:
        policy = policy_for(application.channel, body.policy)
    except ValidationError as err:
        raise ApiError(
            422, "invalid_policy", "the policy overrides are invalid", policy_fields(err)
        ) from err
    print_ = fingerprint(application, policy)
    held = await asyncio.to_thread(store.application, application.application_id)
    if held is not None and held.fingerprint and held.fingerprint != print_:
        raise _reused(application.application_id)
    created = True
    try:
        await client.start_workflow(
            PosOnboarding.run,
            OnboardingStart(
                application=application,
                policy=policy,
                required_documents=required_documents(application),
            ),
            id=application.workflow_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
    except WorkflowAlreadyStartedError:
        created = False  # an idempotent retry: the same application id, already running
    except RPCError as err:  # started or not, the same application id again is safe
        raise start_refused(err) from err
    record = await asyncio.to_thread(
        store.record_application,
        ApplicationRecord(
            application_id=application.application_id,
            workflow_id=application.workflow_id,
            channel=application.channel.value,
            merchant_type=application.merchant.merchant_type.value,
            merchant_name=application.merchant.name,
            stage="collecting_documents",
            application=json.dumps(masked(application.model_dump(mode="json")), ensure_ascii=False),
            fingerprint=print_,
        ),
    )
    if record.fingerprint != print_:  # another body under the same id won a race
        raise _reused(application.application_id)
    started = Started(
        application_id=record.application_id,
        workflow_id=record.workflow_id,
        stage=record.stage,
        created=created,
    )
    return JSONResponse(started.model_dump(mode="json"), status_code=201 if created else 200)


def policy_fields(err: ValidationError) -> dict[str, str]:
    return {
        ".".join(["policy", *(str(p) for p in e["loc"])]): mask_text(e["msg"]) for e in err.errors()
    }


async def visible_record(store: Store, caller: Principal, application_id: str) -> None:
    """A merchant sees only its channel's applications: any other is answered 404, like an
    application that does not exist."""
    if caller.role is not None:
        return
    record = await asyncio.to_thread(store.application, application_id)
    if record is None or not caller.may_see(record.channel):
        raise unknown_application(application_id)


@router.get(
    "/{application_id}",
    response_model=ApplicationStatus,
    summary="The application's status (the workflow's status query)",
    responses={404: described("no such application (for this key)"), **UNAVAILABLE},
)
async def status(
    application_id: ApplicationId, caller: MerchantOrViewer, client: ClientDep, store: StoreDep
) -> JSONResponse:
    await visible_record(store, caller, application_id)
    try:
        result = await workflow(client, application_id).query(PosOnboarding.status)
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            raise unknown_application(application_id) from err
        raise ApiError(503, TEMPORAL_UNAVAILABLE, "the process engine did not answer") from err
    # The status holds no document numbers today; masking keeps it so if one is ever added.
    return JSONResponse(masked(result.model_dump(mode="json")))


@router.post(
    "/{application_id}/documents",
    response_model=SubmissionResult,
    summary="Submit or supplement documents",
    dependencies=[Depends(merchant_or_admin)],
    responses={
        404: described("no such application (for this key)"),
        409: described("the application is not collecting documents, or has ended"),
        422: described("invalid documents: `fields` names each; the valid ones were filed"),
        503: described("still validating, or Temporal unavailable: send the same again later"),
    },
)
async def documents(
    application_id: ApplicationId,
    submission: DocumentSubmission,
    caller: MerchantOrAdmin,
    store: StoreDep,
    client: ClientDep,
    forwarder: ForwarderDep,
    settings: SettingsDep,
) -> JSONResponse:
    """The merchant waits for the validation result: the answer names every bad field."""
    await visible_record(store, caller, application_id)
    result = await file_documents(client, forwarder, settings, application_id, submission)
    body: dict[str, Any] = result.model_dump(mode="json")
    if result.issues:
        # Valid documents were filed; the bad ones are named, nothing else changed.
        raise ApiError(
            422,
            "invalid_documents",
            "some documents are invalid",
            {i.field: i.message for i in result.issues},
            result=body,
        )
    return JSONResponse(body)


async def file_documents(
    client: Client,
    forwarder: Forwarder,
    settings: GatewaySettings,
    application_id: str,
    submission: DocumentSubmission,
) -> SubmissionResult:
    """Send a submission to its application's workflow, kept in the audit trail with its
    outcome, and wait for the validation result (its `issues` name every bad field). The one way
    documents reach a workflow: through the API and through the merchant's page
    (`gateway.routes.page`). Raises ApiError when the workflow refused it, when Temporal did not
    answer, or (503 `still_validating`) while it is still being validated."""
    forwarded: Forwarded[SubmissionResult] = await forwarder.forward(
        workflow(client, application_id),
        PosOnboarding.submit_documents,
        submission,
        application_id=application_id,
        source="merchant",
        kind="documents",
        body=masked(submission.model_dump(mode="json")),
        describe=describe_submission,
        wait_seconds=settings.documents_wait_seconds,
        scope="documents:",  # submission ids are not unique among other messages' ids
    )
    result = forwarded.result
    if result is None:
        # Accepted and still being validated (kept as pending): the same submission sent
        # again is answered with the result once there is one.
        raise ApiError(
            503,
            "still_validating",
            "the documents were accepted and are still being validated: "
            "send the same submission again to read the result",
            retry=True,
        )
    return result
