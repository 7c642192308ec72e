"""How activities call the services over HTTP: one idempotency key per step, business refusals
(4xx) as non-retryable errors with their reason, transport failures and 5xx left to the
activity's retry policy."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Collection
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from schemas.steps import Step

R = TypeVar("R", bound=BaseModel)

# The port each service listens on in the embedded stack (`posflow up` serves them there).
DEFAULT_PORTS = {
    "review": 8101,
    "contract": 8102,
    "device": 8103,
    "logistics": 8104,
    "notification": 8105,
}


def service_url(service: str) -> str:
    """`POSFLOW_<SERVICE>_URL`, else the embedded stack's address for it."""
    default = f"http://127.0.0.1:{DEFAULT_PORTS[service]}"
    return os.environ.get(f"POSFLOW_{service.upper()}_URL", default)


def path(*parts: str) -> str:
    """A URL path from its segments, each quoted (an id may hold any character)."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context every client of the worker shares. Building one loads the CA bundle,
    which cost a third of the worker's CPU when each notice built its own (measured with
    py-spy under `posflow bench`); it honours `SSL_CERT_FILE` as httpx does."""
    return httpx.create_ssl_context()


class ServiceClient:
    """One service's client; `transport` lets tests route requests to an app in-process."""

    def __init__(
        self,
        service: str,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.service = service
        self._client = httpx.AsyncClient(
            base_url=base_url or service_url(service),
            transport=transport,
            timeout=timeout,
            verify=tls_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self, path: str, step: Step, result_type: type[R], *, fields: Collection[str] | None = None
    ) -> R:
        """POST one workflow step: its idempotency key as the header, and as the body its fields
        (`fields` only, when the path already names the rest)."""
        if fields is None:
            body = step.model_dump(mode="json", exclude={"idempotency_key", *Step.CARRIED})
        else:
            body = step.model_dump(mode="json", include=set(fields) - Step.CARRIED)
        return await self.call(
            "POST", path, result_type, idempotency_key=step.idempotency_key, body=body
        )

    async def call(
        self,
        method: str,
        path: str,
        result_type: type[R],
        *,
        idempotency_key: str | None = None,
        body: BaseModel | dict[str, Any] | None = None,
    ) -> R:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        payload = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        try:
            response = await self._client.request(method, path, json=payload, headers=headers)
        except httpx.HTTPError as err:
            # Retryable: the activity's retry policy decides how long to keep trying.
            raise ApplicationError(
                f"{self.service} service unreachable: {type(err).__name__}",
                type="ServiceUnavailable",
            ) from err
        if response.status_code >= 500:
            raise ApplicationError(
                f"{self.service} service answered {response.status_code}", type="ServiceUnavailable"
            )
        if response.status_code >= 400:
            raise _refusal(self.service, response)
        return result_type.model_validate(response.json())


def _refusal(service: str, response: httpx.Response) -> ApplicationError:
    try:
        data = response.json()
        code, message = str(data.get("error", "refused")), str(data.get("message", ""))
        fields = data.get("fields")
        if isinstance(fields, dict) and fields:
            # Which field and which rule: what an operator reads on the timeline.
            message += " (" + "; ".join(f"{k}: {v}" for k, v in fields.items()) + ")"
    except ValueError:
        code, message = "refused", response.text[:200]
    return ApplicationError(
        f"{service} refused ({response.status_code} {code}): {message}",
        {"status": response.status_code, "error": code},
        type=code,
        non_retryable=True,
    )
