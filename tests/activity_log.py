"""An append-only log of activity executions, shared by test apps that run in worker
subprocesses (crash and chaos tests), so tests can count executions across processes."""

from __future__ import annotations

import json
import os
from typing import Any


def append(path: str | None, entry: dict[str, Any]) -> None:
    """Append ``entry`` as one JSON line; one ``os.write`` on an O_APPEND descriptor, so
    lines from concurrent processes never interleave. No path: nothing is logged."""
    if not path:
        return
    line = json.dumps(entry) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def read(path: str) -> list[dict[str, Any]]:
    """The records written so far (a torn last line, impossible with O_APPEND, is skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
