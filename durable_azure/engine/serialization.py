"""Payload encoding: user values <-> the JSON text stored in history and messages.

Plain JSON values pass through ``json``. Objects of classes that define ``to_json`` and a
classmethod ``from_json`` are encoded the way ``azure-functions-durable`` encodes them
(``{"__class__", "__module__", "__data__"}``), so payloads written by function apps decode
here and vice versa.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from durable_azure.errors import DurableAzureError


class PayloadError(DurableAzureError, ValueError):
    """A value cannot be encoded as JSON, or stored text is not valid JSON."""


def _default(obj: Any) -> Any:
    to_json = getattr(type(obj), "to_json", None)
    if callable(to_json) and callable(getattr(type(obj), "from_json", None)):
        return {
            "__class__": type(obj).__name__,
            "__module__": type(obj).__module__,
            "__data__": to_json(obj),
        }
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _object_hook(data: dict[str, Any]) -> Any:
    if data.keys() == {"__class__", "__module__", "__data__"}:
        try:
            module = importlib.import_module(str(data["__module__"]))
            cls = getattr(module, str(data["__class__"]))
        except (ImportError, AttributeError):
            return data
        from_json = getattr(cls, "from_json", None)
        if callable(from_json):
            return from_json(data["__data__"])
    return data


def dumps(value: Any) -> str:
    """Encode a value as JSON text.

    Raises:
        PayloadError: the value (or something inside it) cannot be encoded.
    """
    try:
        return json.dumps(value, default=_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"value cannot be encoded as JSON: {exc}") from exc


def loads(text: str | None) -> Any:
    """Decode JSON text; ``None`` and ``""`` decode to ``None``.

    Raises:
        PayloadError: the text is not valid JSON.
    """
    if text is None or text == "":
        return None
    try:
        return json.loads(text, object_hook=_object_hook)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"stored payload is not valid JSON: {exc}") from exc
