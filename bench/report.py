"""Issue 6's targets and the printed table of results."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """A figure's target: ``at_least`` or at most ``value``. ``only_for_n``: the target is
    for that size (the ``n`` field next to the figure); other sizes are not judged."""

    value: float
    at_least: bool = False
    only_for_n: int | None = None

    def describe(self) -> str:
        text = f"{'>=' if self.at_least else '<='} {self.value:g}"
        return text if self.only_for_n is None else f"{text} (n={self.only_for_n})"

    def judge(self, value: float, siblings: Mapping[str, Any]) -> str:
        if self.only_for_n is not None and siblings.get("n") != self.only_for_n:
            return "-"
        met = value >= self.value if self.at_least else value <= self.value
        return "yes" if met else "NO"


#: Issue 6's targets, by figure (the dotted path of the figure in the JSON results).
TARGETS: dict[str, Target] = {
    "hello_sequence5.orchestrations_per_s": Target(60, at_least=True),
    "single.latency_ms.p50": Target(50),
    "single.latency_ms.p99": Target(150),
    "fanout_1000.seconds": Target(4, only_for_n=1000),
    "storage_ops_per_orchestration.total": Target(20),
    "idle.transactions_per_hour": Target(600),
    "idle.first_pickup_ms": Target(1000),
    "external_events.events_per_s": Target(200, at_least=True),
}

_ROW = "{:<46} {:>12} {:>18} {:>4}"


def _leaves(
    path: str, value: Any, siblings: Mapping[str, Any]
) -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
    """(dotted path, value, the dict holding it) for every number under ``value``."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _leaves(f"{path}.{key}", inner, value)
    else:
        yield path, value, siblings


def _row(path: str, value: Any, siblings: Mapping[str, Any]) -> str:
    target = TARGETS.get(path)
    if target is None:
        return _ROW.format(path, value, "-", "-")
    return _ROW.format(path, value, target.describe(), target.judge(value, siblings))


def render(results: Mapping[str, Any], notes: Mapping[str, str]) -> str:
    """The table: one line per figure (value, target, met), or a scenario's note (skipped,
    failed) in place of its figures."""
    lines = [_ROW.format("figure", "value", "target", "met")]
    for key, value in results.items():
        if key == "machine":
            continue
        if value is None:
            lines.append(f"{key:<46} {notes.get(key, 'not run')}")
        else:
            lines.extend(_row(*leaf) for leaf in _leaves(key, value, results))
    machine = results.get("machine") or {}
    lines.append(
        f"machine: {machine.get('cpus')} CPUs, Python {machine.get('python')}, "
        f"Azurite {machine.get('azurite') or 'version unknown'}"
    )
    return "\n".join(lines)
