"""The workflow modules are passed through the sandbox (`workers.temporal.workflow_runner`): they
are imported once per worker, not once per workflow run, so every workflow run shares their
module-level values. None of those may be mutable, or one run could change what another sees
(and replay would depend on what ran before it in the same worker)."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import workflows

MUTABLE = (dict, list, set, bytearray)


def workflow_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"workflows.{info.name}")
        for info in pkgutil.iter_modules(workflows.__path__)
    ]


def test_the_workflow_modules_keep_no_mutable_state() -> None:
    modules = workflow_modules()
    assert {m.__name__ for m in modules} >= {"workflows.onboarding", "workflows.merchant"}
    mutable = [
        f"{module.__name__}.{name}: {type(value).__name__}"
        for module in modules
        for name, value in vars(module).items()
        if not name.startswith("__") and isinstance(value, MUTABLE)
    ]
    assert mutable == []


def test_a_mutable_module_value_is_found() -> None:
    """The check itself: a module-level dict is reported."""
    module = ModuleType("workflows.example")
    module.CACHE = {}  # type: ignore[attr-defined]
    assert [n for n, v in vars(module).items() if isinstance(v, MUTABLE)] == ["CACHE"]
