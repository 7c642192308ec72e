"""Structured logging for every posflow process, with personal data masked before it is written.

JSON lines when `POSFLOW_LOG_FORMAT=json` (or stdout is not a terminal, so log collectors get
JSON), readable console lines at a terminal. The Temporal SDK logs through the standard library,
and its core's log lines are forwarded there: all of them go through the same masking and
renderer.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from pydantic import BaseModel
from structlog.typing import EventDict, Processor, WrappedLogger
from temporalio import activity, workflow
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from schemas.application import application_id_of

# Keys whose whole value is a personal number, wherever they appear (also as a suffix:
# `settlement_account_number`, `contact_mobile`).
PERSONAL_KEYS = ("id_number", "account_number", "card_number", "mobile")
# A document's `number` is an ID, licence or account number: masked only inside a document, so
# counters and other innocent `number` fields stay readable.
DOCUMENT_NUMBER_KEY = "number"
# Identifiers (the application's, the services' references, the acquirer's and the carrier's):
# what operators look cases up by, never personal data, so they are never touched, whatever
# digits they hold. Any key ending in `_id` or `_ids` is one too.
OPERATIONAL_KEYS = frozenset(
    {
        "mid",
        "tid",
        "tids",
        "serial",
        "serials",
        "tracking_number",
        "reference",
        "payment_reference",
        "path",
    }
)

# In free text, a standalone run that looks like a personal number: a resident ID (17 digits
# and a check character) or 16 digits and more (card and account numbers). Digits glued to
# letters, hyphens or underscores are part of an identifier (`rc-421fdb9f…`, `SH-2026…`), and
# shorter runs (a MID is 15 digits, a mobile 11) are left alone: a personal field is masked
# because of its name, not its shape.
_PERSONAL_IN_TEXT = re.compile(r"(?<![0-9A-Za-z_\-])(\d{17}[0-9Xx]|\d{16,30})(?![0-9A-Za-z_\-])")
_RESIDENT_ID = re.compile(r"\d{17}[0-9Xx]")


def mask_number(value: object) -> str:
    """Mask a whole personal number: a resident ID keeps its first 3 and last 4 characters,
    anything else its last 4."""
    text = str(value).strip()
    if _RESIDENT_ID.fullmatch(text):
        return text[:3] + "*" * 11 + text[-4:]
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]


def mask_text(text: str) -> str:
    """Mask what looks like a personal number inside free text (messages, reasons, errors): a
    safety net, since posflow's own messages never quote one."""
    return _PERSONAL_IN_TEXT.sub(lambda m: mask_number(m.group(1)), text)


def _is_identifier_key(key: str) -> bool:
    key = key.lower()
    return key in OPERATIONAL_KEYS or key.endswith(("_id", "_ids")) or key == "id"


def _is_personal_key(key: str) -> bool:
    key = key.lower()
    return any(key == name or key.endswith("_" + name) for name in PERSONAL_KEYS)


def _mask(value: Any, *, in_document: bool = False) -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, Mapping):
        # A dumped `schemas.documents.Document` is recognised by its shape.
        in_document = in_document or ("kind" in value and "file_id" in value)
        return {key: _mask_item(str(key), item, in_document) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item, in_document=in_document) for item in value]
    return value


def _mask_item(key: str, item: Any, in_document: bool) -> Any:
    if item is None or item == "":
        return item
    if _is_identifier_key(key):
        return item
    if _is_personal_key(key) or (in_document and key == DOCUMENT_NUMBER_KEY):
        return mask_number(item)
    # Whatever is logged under `document=` / `documents=` is a document or a list of them.
    return _mask(item, in_document=in_document or "document" in key.lower())


def masked(value: Any) -> Any:
    """`value` (a model, mapping, list or text) with every personal number masked."""
    return _mask(value)


def mask_personal_data(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask personal numbers in every value of the event, nested included."""
    masked: EventDict = _mask(event_dict)
    return masked


def add_temporal_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the details the Temporal SDK's workflow and activity loggers attach
    (`temporal_workflow`, `temporal_activity`) become the same flat fields the rest of posflow
    logs: `workflow_id`, `run_id`, `activity`, `attempt`, and the `application_id` they imply."""
    for key in ("temporal_workflow", "temporal_activity"):
        details = event_dict.pop(key, None)
        if not isinstance(details, Mapping):
            continue
        for source, target in (
            ("workflow_id", "workflow_id"),
            ("run_id", "run_id"),
            ("activity_type", "activity"),
            ("attempt", "attempt"),
            ("update_name", "update"),
        ):
            if details.get(source) is not None:
                event_dict.setdefault(target, details[source])
    application = application_id_of(event_dict.get("workflow_id"))
    if application is not None:
        event_dict.setdefault("application_id", application)
    return event_dict


def _use_json() -> bool:
    setting = os.environ.get("POSFLOW_LOG_FORMAT", "").strip().lower()
    if setting in ("json", "console"):
        return setting == "json"
    return not sys.stdout.isatty()


def configure_logging(json: bool | None = None, level: int | str = logging.INFO) -> None:
    """Configure structlog and the standard library's root logger for this process.

    `json=None` decides from `POSFLOW_LOG_FORMAT` (`json` or `console`), else from whether stdout
    is a terminal.
    """
    as_json = _use_json() if json is None else json
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        # `extra=` of standard-library calls (the workflow logger's application, stage...).
        structlog.stdlib.ExtraAdder(),
        add_temporal_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text before masking: an exception message may quote a number.
        structlog.processors.format_exc_info,
        mask_personal_data,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached, so tests can capture the output of loggers created at import time.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # The ids go into fields (above), not onto the end of every message.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    _forward_temporal_core_logs()


_core_logs_forwarded = False


def core_logging() -> LoggingConfig:
    """The Temporal core's log lines, forwarded to the standard library's `temporalio.core`."""
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )


def _forward_temporal_core_logs() -> None:
    """Route the Temporal core's own log lines (workflow task failures with their stack traces,
    which the Rust core otherwise prints raw to stderr) through the standard library, so they
    are masked and rendered like every other line.

    Clients use the runtime that is the default when they are created: this runs before the
    process makes its first client, and once.
    """
    global _core_logs_forwarded
    if _core_logs_forwarded:
        return
    runtime = Runtime(telemetry=TelemetryConfig(logging=core_logging()))
    Runtime.set_default(runtime, error_if_already_set=False)
    _core_logs_forwarded = True
