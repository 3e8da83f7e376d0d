"""Small HTML helpers shared by the dashboard's pages: escaping, times, links."""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from durable_azure.engine.history import OrchestrationStatus

__all__ = ["Ui", "esc", "fmt_seconds", "fmt_time", "hidden", "status_badge"]


def esc(value: object) -> str:
    """``value`` as text, escaped for HTML content and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt_time(value: datetime | None, *, millis: bool = False) -> str:
    if value is None:
        return ""
    text = value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def fmt_seconds(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Ui:
    """What every page needs: where the dashboard is mounted, the hub, the mode, and the
    token forms must carry."""

    prefix: str
    hub: str
    read_only: bool
    csrf: str

    def url(self, path: str, params: Iterable[tuple[str, str]] | Mapping[str, Any] = ()) -> str:
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        query = urlencode([(k, str(v)) for k, v in items if v is not None and v != ""])
        return f"{self.prefix}{path}" + (f"?{query}" if query else "")

    def link(self, path: str, text: object, params: Any = (), **attrs: str) -> str:
        extra = "".join(f' {k.rstrip("_")}="{esc(v)}"' for k, v in attrs.items())
        return f'<a href="{esc(self.url(path, params))}"{extra}>{esc(text)}</a>'

    def instance_link(self, instance_id: str, text: object | None = None) -> str:
        return self.link("/instance", instance_id if text is None else text, {"id": instance_id})

    def csrf_field(self) -> str:
        return hidden("csrf", self.csrf)


def hidden(name: str, value: object) -> str:
    return f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'


def status_badge(status: OrchestrationStatus | str) -> str:
    name = status.name if isinstance(status, OrchestrationStatus) else str(status)
    return f'<span class="status s-{esc(name)}">{esc(name)}</span>'
