"""The replay engine stays pure: no I/O, no clock, no randomness, no Azure SDK.

Checked on the source (AST), so a forbidden import hidden in a function body or behind
``TYPE_CHECKING`` is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import durable_azure.engine

ENGINE_DIR = Path(durable_azure.engine.__file__).parent

#: Top-level packages the engine must not import.
FORBIDDEN_MODULES = frozenset(
    {
        "azure",
        "asyncio",
        "socket",
        "time",
        "random",
        "secrets",
        "os",
        "threading",
        "subprocess",
        "requests",
        "aiohttp",
        "httpx",
    }
)

#: ``durable_azure`` subpackages the engine must not depend on (they do I/O).
FORBIDDEN_INTERNAL = ("durable_azure.storage",)

#: Attribute calls that read the clock or draw randomness.
FORBIDDEN_CALLS = frozenset({"now", "utcnow", "today", "uuid1", "uuid4", "urandom"})


def violations(source: str) -> list[str]:
    """What in ``source`` breaks the engine's purity rules."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        line = getattr(node, "lineno", 0)
        for module in modules:
            if module.split(".")[0] in FORBIDDEN_MODULES or module.startswith(FORBIDDEN_INTERNAL):
                found.append(f"line {line}: imports {module}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in FORBIDDEN_CALLS
        ):
            found.append(f"line {node.lineno}: calls .{node.func.attr}()")
    return found


def engine_sources() -> list[Path]:
    return sorted(ENGINE_DIR.glob("*.py"))


def test_engine_sources_are_found() -> None:
    names = {path.name for path in engine_sources()}
    assert {"history.py", "actions.py", "tasks.py", "context.py", "replay.py"} <= names


@pytest.mark.parametrize("path", engine_sources(), ids=lambda p: p.name)
def test_engine_module_is_pure(path: Path) -> None:
    assert violations(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import os", "imports os"),
        ("import os.path as p", "imports os.path"),
        ("from azure.data.tables import TableClient", "imports azure.data.tables"),
        ("def f():\n    import asyncio", "imports asyncio"),
        ("from time import monotonic", "imports time"),
        ("from durable_azure.storage import primitives", "imports durable_azure.storage"),
        ("from datetime import datetime\nx = datetime.now()", "calls .now()"),
        ("import datetime\nx = datetime.datetime.utcnow()", "calls .utcnow()"),
        ("import uuid\nx = uuid.uuid4()", "calls .uuid4()"),
    ],
)
def test_purity_checker_catches(snippet: str, expected: str) -> None:
    assert any(expected in v for v in violations(snippet))


def test_purity_checker_allows_what_the_engine_needs() -> None:
    source = (
        "import json, uuid, inspect, traceback, logging\n"
        "from datetime import datetime, timezone\n"
        "from durable_azure.engine import serialization\n"
        "x = uuid.uuid5(uuid.NAMESPACE_OID, 'a')\n"
    )
    assert violations(source) == []
