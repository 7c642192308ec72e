"""The lint rule that keeps workflow code replayable: the clock, chance and I/O are banned in
workflows/ (ruff's banned-api, TID251, and PTH123 for the builtin `open`), and only there.

The offending module is checked under the project's own ruff configuration in a copy laid out as
the project is, so the test proves the configuration, not a copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
RUFF = Path(sys.executable).parent / "ruff"
BANNED_CODES = {"TID251", "PTH123"}

# Each line is one banned use; the comment names the rule that must report it.
OFFENDING = """\
import datetime as dt
import os  # TID251 os
import random  # TID251 random
import secrets  # TID251 secrets
import socket  # TID251 socket
import time  # TID251 time
import uuid
from datetime import date, datetime
from pathlib import Path  # TID251 pathlib
from time import sleep  # TID251 time

import httpx  # TID251 httpx
import requests  # TID251 requests
import sqlalchemy  # TID251 sqlalchemy
import sqlmodel  # TID251 sqlmodel
from activities import http  # TID251 activities.http

started = datetime.now()  # TID251 datetime.datetime.now
started_utc = dt.datetime.utcnow()  # TID251 datetime.datetime.utcnow
today = date.today()  # TID251 datetime.date.today
run_id = uuid.uuid4()  # TID251 uuid.uuid4
with open("policy.json") as policy:  # PTH123 open
    pass
print(time.monotonic(), random.random(), secrets.token_hex(), os.environ, sleep, Path, socket)
print(httpx, requests, sqlalchemy, sqlmodel, http)
"""

# The same names used the way a workflow may use them: nothing here may be reported.
ALLOWED = """\
from datetime import datetime, time, timedelta, timezone

from temporalio import workflow

CHINA = timezone(timedelta(hours=8))
OPENING = time(9, 0)


def started_at() -> datetime:
    return workflow.now().astimezone(CHINA)


def request_id() -> str:
    return str(workflow.uuid4())
"""


def _expected(source: str) -> set[tuple[int, str, str]]:
    """(line, code, banned name) from the `# CODE name` comments of `source`."""
    expected = set()
    for number, line in enumerate(source.splitlines(), start=1):
        if "  # " in line:
            code, name = line.split("  # ", 1)[1].split(" ", 1)
            expected.add((number, code, name))
    return expected


def _check(project: Path, *paths: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(RUFF), "check", "--no-cache", "--output-format", "json", *paths],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return findings


def _banned(findings: list[dict[str, Any]]) -> set[tuple[int, str, str]]:
    found = set()
    for finding in findings:
        if finding["code"] not in BANNED_CODES:
            continue
        message: str = finding["message"]
        # "`datetime.datetime.now` is banned: ..." / "`open()` should be replaced by ..."
        name = message.split("`")[1].removesuffix("()")
        found.add((finding["location"]["row"], finding["code"], name))
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with the project's ruff configuration, for modules laid out as the project's."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in ("workflows", "gateway"):
        (tmp_path / package).mkdir()
    return tmp_path


def test_every_banned_use_is_reported_in_workflows(project: Path) -> None:
    (project / "workflows" / "bad.py").write_text(OFFENDING)
    assert _banned(_check(project, "workflows/bad.py")) == _expected(OFFENDING)


def test_allowed_uses_are_not_reported_in_workflows(project: Path) -> None:
    (project / "workflows" / "good.py").write_text(ALLOWED)
    assert _banned(_check(project, "workflows/good.py")) == set()


def test_the_rule_applies_to_workflows_only(project: Path) -> None:
    (project / "gateway" / "bad.py").write_text(OFFENDING)
    assert _banned(_check(project, "gateway/bad.py")) == set()


def test_the_real_workflows_pass() -> None:
    findings = _banned(_check(ROOT, "workflows"))
    assert findings == set(), f"banned uses in workflows/: {sorted(findings)}"
