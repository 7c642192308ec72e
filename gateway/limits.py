"""What the gateway takes in, and how much of it it keeps: bodies are refused with 413 past a
limit before they are read in full, path ids are bounded, and a refused body leaves only a
masked excerpt in the audit trail."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import HTTPException, Path
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.logging import mask_text, masked

# An application id as `schemas.application.Application` allows it: what a path may name.
APPLICATION_ID_RULE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_APPLICATION_ID = re.compile(APPLICATION_ID_RULE)
ApplicationId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=APPLICATION_ID_RULE,
        description="the application's id: 1-64 letters, digits, '-' or '_'",
    ),
]

# What the audit trail keeps of a refused body: the masked JSON if it is this short, else this
# many characters of it, masked and marked as cut.
EXCERPT_CHARS = 1000
_DIGITS = re.compile(r"(?<![0-9])[0-9]{3,}([0-9]{4})(?![0-9])")
_CUT_WORD = re.compile(r"[0-9A-Za-z]+$")


def valid_id(application_id: str) -> bool:
    return bool(_APPLICATION_ID.fullmatch(application_id))


def excerpt(raw: bytes) -> Any:
    """A refused body as the audit trail keeps it: parsed and masked when short, else a masked
    excerpt of its first characters with its size."""
    if len(raw) <= EXCERPT_CHARS:
        try:
            parsed = json.loads(raw)
            # JSON may spell a lone surrogate (`"\\udc00"`), which has no UTF-8 form and no
            # database keeps: such a body is kept as the text it came as, like a long one.
            json.dumps(parsed, ensure_ascii=False).encode()
            return masked(parsed)
        except ValueError:  # not JSON, or (UnicodeEncodeError) a lone surrogate
            pass
    text = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    cut = len(text) > EXCERPT_CHARS or len(raw) > EXCERPT_CHARS * 4
    text = text[:EXCERPT_CHARS]
    if cut:
        # A number cut in two must not leave its first digits unmasked.
        text = _CUT_WORD.sub("", text)
    # Any run of 7 digits or more keeps only its last 4 (mobiles too, which mask_text keeps).
    text = _DIGITS.sub(lambda m: "*" * (len(m.group(0)) - 4) + m.group(1), mask_text(text))
    return {"excerpt": text, "bytes": len(raw), "truncated": cut}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes")
        self.limit = limit


def too_large_body(limit: int) -> dict[str, Any]:
    return {
        "error": "body_too_large",
        "message": f"the body is larger than {limit} bytes",
        "fields": {},
        "retry": False,
    }


# Before a 413, what the client still sends of the refused body is read and thrown away, this
# much at most and for this long at most, so that it can read the answer (a socket closed on
# unread data is reset, and the client loses the 413 with it). Nothing of it is kept; a body
# declared larger than this is answered at once.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 2.0


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: at once when its Content-Length says
    so, else as soon as that many bytes have arrived (`BodyTooLarge`, answered by the app's
    handler). `refused` is told each time (for the metrics)."""

    def __init__(self, app: ASGIApp, limit: int, refused: Callable[[], None]) -> None:
        self.app, self.limit, self.refused = app, limit, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            self.refused()
            if declared <= DRAIN_BYTES:
                await _drain(receive)
            response = JSONResponse(
                too_large_body(self.limit), status_code=413, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    self.refused()
                    if message.get("more_body", False):
                        await _drain(receive)
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _drain(receive: Receive) -> None:
    """Read and discard the rest of a refused body (bounded in bytes and time)."""
    drained = 0
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while drained < DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
