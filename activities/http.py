"""How activities call the services over HTTP: one idempotency key per step, business refusals
(4xx) as non-retryable errors with their reason, transport failures and 5xx left to the
activity's retry policy."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

R = TypeVar("R", bound=BaseModel)

DEFAULT_URLS = {
    "review": "http://127.0.0.1:8101",
    "contract": "http://127.0.0.1:8102",
    "device": "http://127.0.0.1:8103",
    "logistics": "http://127.0.0.1:8104",
}


def service_url(service: str) -> str:
    """`POSFLOW_<SERVICE>_URL`, else the embedded stack's address for it."""
    return os.environ.get(f"POSFLOW_{service.upper()}_URL", DEFAULT_URLS[service])


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
            base_url=base_url or service_url(service), transport=transport, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._client.aclose()

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
    except ValueError:
        code, message = "refused", response.text[:200]
    return ApplicationError(
        f"{service} refused ({response.status_code} {code}): {message}",
        {"status": response.status_code, "error": code},
        type=code,
        non_retryable=True,
    )
