"""Names, keys and limits of the DTFx Azure Storage layout — one named rule each.

See ``docs/storage.md`` and the reference ``dtfx-azure-storage.md`` §1-§4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from durable_azure.errors import ConfigurationError, InvalidInstanceIdError

# --- limits ------------------------------------------------------------------------------

#: Partition (control queue) count: DTFx default and allowed range.
DEFAULT_PARTITION_COUNT = 4
MIN_PARTITION_COUNT = 1
MAX_PARTITION_COUNT = 16

#: Azure allows at most 32 messages per Get Messages request.
MAX_MESSAGES_PER_RECEIVE = 32

#: A queue message's JSON above this many UTF-8 bytes is gzipped into a blob (DTFx: 45 KiB,
#: so that even base64 encoding stays under the 64 KiB queue limit).
MAX_INLINE_MESSAGE_BYTES = 45 * 1024

#: A table string property above this many UTF-16 bytes goes to a blob (Azure's hard
#: limit is 64 KiB per property; DTFx offloads above 60 KiB).
MAX_INLINE_PROPERTY_BYTES = 60 * 1024

#: History rows per entity-group transaction: 99 rows + the sentinel = Azure's 100 limit.
MAX_HISTORY_ROWS_PER_BATCH = 99

#: Estimated transaction payload limit (Azure rejects > 4 MiB; Azurite does not check).
MAX_BATCH_PAYLOAD_BYTES = 3 * 1024 * 1024

#: Azure's maximum message visibility timeout.
MAX_VISIBILITY_TIMEOUT = timedelta(days=7)

#: The longest a timer or scheduled start is parked in a queue at once; later ones are
#: parked in steps (the message surfaces early and is parked again).
MAX_MESSAGE_DELAY = MAX_VISIBILITY_TIMEOUT - timedelta(hours=1)

#: Instance ids longer than this are rejected (they become table keys and blob names).
MAX_INSTANCE_ID_LENGTH = 256

#: Task hub names: letters and digits, starting with a letter. 45 is the limit the Durable
#: Functions extension enforces; the longest derived name (``-largemessages``) then stays
#: within Azure's 63-character queue/container limit.
MIN_TASK_HUB_NAME_LENGTH = 3
MAX_TASK_HUB_NAME_LENGTH = 45

_HUB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")

#: The RowKey of the history row that guards every history write with its ETag.
SENTINEL_ROW_KEY = "sentinel"

#: The RowKey of the single Instances row of an instance.
INSTANCE_ROW_KEY = ""


def validate_task_hub_name(name: str) -> str:
    """Return ``name`` if it is a valid task hub name.

    Raises:
        ConfigurationError: naming the rule that was broken.
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError("the task hub name must be a non-empty string")
    if not (MIN_TASK_HUB_NAME_LENGTH <= len(name) <= MAX_TASK_HUB_NAME_LENGTH):
        raise ConfigurationError(
            f"task hub name {name!r} must be {MIN_TASK_HUB_NAME_LENGTH}-"
            f"{MAX_TASK_HUB_NAME_LENGTH} characters long (it is {len(name)})"
        )
    if not _HUB_NAME.fullmatch(name):
        raise ConfigurationError(
            f"task hub name {name!r} must contain only letters and digits and start with a "
            "letter (Azure table names allow no hyphens or underscores)"
        )
    return name


def validate_partition_count(count: int) -> int:
    """Return ``count`` if it is an allowed partition count (1-16)."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigurationError(f"partition count must be an integer, got {count!r}")
    if not MIN_PARTITION_COUNT <= count <= MAX_PARTITION_COUNT:
        raise ConfigurationError(
            f"partition count must be between {MIN_PARTITION_COUNT} and "
            f"{MAX_PARTITION_COUNT}, got {count}"
        )
    return count


@dataclass(frozen=True, slots=True)
class TaskHubNames:
    """Every storage resource name of one task hub (DTFx names)."""

    hub: str
    partition_count: int = DEFAULT_PARTITION_COUNT

    def __post_init__(self) -> None:
        validate_task_hub_name(self.hub)
        validate_partition_count(self.partition_count)

    def control_queue(self, partition: int) -> str:
        """``{hub}-control-NN``, lowercase, NN zero-padded."""
        if not 0 <= partition < self.partition_count:
            raise ValueError(f"partition {partition} is outside 0..{self.partition_count - 1}")
        return f"{self.hub.lower()}-control-{partition:02d}"

    @property
    def control_queues(self) -> list[str]:
        return [self.control_queue(p) for p in range(self.partition_count)]

    @property
    def work_item_queue(self) -> str:
        return f"{self.hub.lower()}-workitems"

    @property
    def history_table(self) -> str:
        return f"{self.hub}History"

    @property
    def instances_table(self) -> str:
        return f"{self.hub}Instances"

    @property
    def partitions_table(self) -> str:
        return f"{self.hub}Partitions"

    @property
    def large_messages_container(self) -> str:
        return f"{self.hub.lower()}-largemessages"

    @property
    def poison_container(self) -> str:
        """Messages set aside after failing too often (ours; DTFx has no such place)."""
        return f"{self.hub.lower()}-poison"

    def partition_of(self, instance_id: str) -> int:
        """The partition (control queue index) an instance belongs to."""
        return fnv1a32(instance_id.encode("utf-8")) % self.partition_count


# --- hashing -----------------------------------------------------------------------------

_FNV_OFFSET_BASIS = 0x811C9DC5
_FNV_PRIME = 16777619


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32-bit, as DTFx hashes instance ids (UTF-8 bytes, no normalisation)."""
    h = _FNV_OFFSET_BASIS
    for byte in data:
        h ^= byte
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return h


# --- keys --------------------------------------------------------------------------------

_ESCAPES = {"^": "^^", "/": "^0", "\\": "^1", "#": "^2", "?": "^3"}
_UNESCAPES = {"^": "^", "0": "/", "1": "\\", "2": "#", "3": "?"}
_CONTROL_SHIFT = 0xC0  # DTFx shifts control characters by U+00C0 ('À')


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code <= 0x1F or 0x7F <= code <= 0x9F


def escape_key(instance_id: str) -> str:
    """DTFx's PartitionKey escaping: ``^`` escapes, control characters shifted. Apply once."""
    out: list[str] = []
    for ch in instance_id:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif _is_control(ch):
            out.append("^" + chr(ord(ch) + _CONTROL_SHIFT))
        else:
            out.append(ch)
    return "".join(out)


def unescape_key(key: str) -> str:
    """The inverse of :func:`escape_key`."""
    out: list[str] = []
    chars = iter(key)
    for ch in chars:
        if ch != "^":
            out.append(ch)
            continue
        nxt = next(chars, "")
        if nxt in _UNESCAPES:
            out.append(_UNESCAPES[nxt])
        elif nxt:
            out.append(chr(ord(nxt) - _CONTROL_SHIFT))
    return "".join(out)


def history_row_key(position: int) -> str:
    """A history RowKey: the event's position as 16-digit uppercase hex."""
    if position < 0:
        raise ValueError(f"history position must be >= 0, got {position}")
    return f"{position:016X}"


def validate_instance_id(instance_id: object) -> str:
    """Return ``instance_id`` if it can name an orchestration instance.

    Characters that table keys cannot hold (``/ \\ # ?`` and control characters) are
    allowed: they are escaped in keys. What is rejected cannot be stored at all.

    Raises:
        InvalidInstanceIdError: naming the problem.
    """
    if not isinstance(instance_id, str):
        raise InvalidInstanceIdError(
            f"an instance id must be a string, got {type(instance_id).__name__}"
        )
    if not instance_id:
        raise InvalidInstanceIdError("an instance id must not be empty")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInstanceIdError(
            f"an instance id must be at most {MAX_INSTANCE_ID_LENGTH} characters "
            f"(this one has {len(instance_id)})"
        )
    if instance_id.startswith("@"):
        raise InvalidInstanceIdError(
            f"instance id {instance_id!r} starts with '@', which is reserved for entities"
        )
    try:
        instance_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInstanceIdError(
            f"instance id {instance_id!r} is not valid Unicode text (lone surrogate)"
        ) from exc
    return instance_id


def utf16_size(text: str) -> int:
    """Size of ``text`` in UTF-16 bytes, the measure Azure Tables limits apply to."""
    return len(text.encode("utf-16-le"))
