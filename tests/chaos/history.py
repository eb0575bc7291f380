"""The chaos suite's history: one JSON line per event, shared by runner and checkers.

Theory of operation. Every process of a chaos run (workers, the runner's
observers, the nemesis, the runner itself) appends what it saw to its own
JSON-lines file through a ``HistoryWriter``; the runner merges those files
into one ``history.jsonl`` sorted by ``t``; the checkers read it back with
``load``. ``t`` is ``time.monotonic()`` of the recording process: on Linux
that is CLOCK_MONOTONIC, one clock for every process on the machine (network
namespaces do not change it), so events of different processes can be
ordered by ``t`` alone.

Any recording process may be killed -9 at any moment. Each event is one
``write(2)`` of one whole line on an ``O_APPEND`` descriptor, so a kill leaves
either the whole line or, at worst, a torn last line; ``read`` skips a torn
*last* line and counts it, but a bad line anywhere else is corruption and
raises ``HistoryError``.

The kinds and fields are fixed by the contract /work/briefs/chaos-history.md
(``docs/chaos.md``, section History): one frozen dataclass per kind below.
``from_json`` checks every field's presence and type and refuses unknown
fields, so a runner and checkers that drift apart fail loudly, at the line
that differs, instead of checking the wrong thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import structlog

log = structlog.get_logger(__name__)

WRITE_OPS = ("raise_fence", "claim_run", "write_chunk", "settle_run")
WRITE_OUTCOMES = ("accepted", "stale", "conflict", "error", "unknown")
FAULT_PHASES = ("start", "end")
_CHOICES: dict[str, tuple[str, ...]] = {
    "op": WRITE_OPS,
    "outcome": WRITE_OUTCOMES,
    "phase": FAULT_PHASES,
}


class HistoryError(ValueError):
    """A history line or event that does not follow the contract."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    """Fields every event carries; subclasses add theirs and name their ``kind``."""

    kind: ClassVar[str] = ""
    t: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, ``t`` and ``kind`` first."""
        out: dict[str, Any] = {"t": self.t, "kind": self.kind, "source": self.source}
        for f in dataclasses.fields(self):
            if f.name not in out:
                out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_json(self) -> str:
        """One line of JSON, without the newline."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build and type-check the event. Raises HistoryError."""
        event: Self = _build(cls, data)
        return event


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


# --- worker events (as the worker saw them through sidecar/client.py Lease) ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Campaign(_Event):
    kind: ClassVar[str] = "campaign"
    election: str
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Granted(_Event):
    """The worker got ``token``; it may act until ``deadline`` (its client's
    safe deadline, on its time.monotonic())."""

    kind: ClassVar[str] = "granted"
    election: str
    worker: str
    token: int
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Renewed(_Event):
    """An acknowledged keep-alive, sent at ``sent_at``, moved the safe deadline."""

    kind: ClassVar[str] = "renewed"
    election: str
    worker: str
    token: int
    sent_at: float
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Lost(_Event):
    kind: ClassVar[str] = "lost"
    election: str
    worker: str
    token: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resigned(_Event):
    kind: ClassVar[str] = "resigned"
    election: str
    worker: str
    token: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Write(_Event):
    """One ledger call: ``t_start`` when it began, ``t`` when its outcome was known."""

    kind: ClassVar[str] = "write"
    election: str
    worker: str
    token: int
    op: str
    run_id: str | None
    chunk: int | None
    t_start: float
    outcome: str
    detail: str


# --- observer, nemesis, runner ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder(_Event):
    """A holder change as the Observe stream of sidecar ``node`` reported it
    (``worker`` and ``token`` null: nobody holds the election)."""

    kind: ClassVar[str] = "holder"
    node: str
    election: str
    worker: str | None
    token: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault(_Event):
    kind: ClassVar[str] = "fault"
    fault: str
    phase: str
    targets: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heal(_Event):
    """Every fault is healed: the liveness phase starts."""

    kind: ClassVar[str] = "heal"


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalLedger(_Event):
    """``audit`` is ``AuditReport.to_dict()`` (its counters, findings and ``ok``)."""

    kind: ClassVar[str] = "final_ledger"
    audit: dict[str, Any]
    backend: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantRecord:
    """One grant of a sidecar's audit trail (ListGrants)."""

    election: str
    token: int
    worker: str
    granted_at_ms: int
    ended_at_ms: int | None
    end_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalGrants(_Event):
    kind: ClassVar[str] = "final_grants"
    node: str
    grants: tuple[GrantRecord, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalDigest(_Event):
    kind: ClassVar[str] = "final_digest"
    node: str
    applied_index: int
    digest: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Liveness(_Event):
    """``holder_at``: first holder with a worker after the heal seen by a majority;
    ``caught_up_at``: every live node at the leader's applied index (null: never)."""

    kind: ClassVar[str] = "liveness"
    healed_at: float
    holder_at: float | None
    caught_up_at: float | None
    bound_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Planted(_Event):
    """Which negative control this run is (``defect`` null for a real run)."""

    kind: ClassVar[str] = "planted"
    defect: str | None


Event = (
    Campaign
    | Granted
    | Renewed
    | Lost
    | Resigned
    | Write
    | Holder
    | Fault
    | Heal
    | FinalLedger
    | FinalGrants
    | FinalDigest
    | Liveness
    | Planted
)
_KIND_CLASSES: tuple[type[Event], ...] = typing.get_args(Event)
KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in _KIND_CLASSES}
"""Event class by ``kind``."""


# --- validation ---


def _check(name: str, hint: Any, value: Any) -> Any:
    """``value`` converted to ``hint``'s shape; HistoryError if it does not fit."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(name, inner, value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            if name in _CHOICES and value not in _CHOICES[name]:
                raise HistoryError(f"{name} {value!r} is not one of {', '.join(_CHOICES[name])}")
            return value
    elif origin is tuple and isinstance(value, list):
        return tuple(_check(name, args[0], v) for v in value)
    elif origin is dict and isinstance(value, dict):
        return dict(value)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value)
    raise HistoryError(f"field {name!r}: {value!r} is not a {getattr(hint, '__name__', hint)}")


_SCHEMAS: dict[type[Any], tuple[list[str], dict[str, Any]]] = {}


def _schema(cls: type[Any]) -> tuple[list[str], dict[str, Any]]:
    """Field names and their types (resolving annotations is slow: once per class)."""
    if cls not in _SCHEMAS:
        _SCHEMAS[cls] = [f.name for f in dataclasses.fields(cls)], typing.get_type_hints(cls)
    return _SCHEMAS[cls]


def _build(cls: type[Any], data: Mapping[str, Any]) -> Any:
    names, hints = _schema(cls)
    given = set(data) - {"kind"}
    missing = sorted(set(names) - given)
    extra = sorted(given - set(names))
    if missing or extra:
        what = getattr(cls, "kind", "") or cls.__name__
        raise HistoryError(f"{what}: missing fields {missing}, unknown fields {extra}")
    return cls(**{n: _check(n, hints[n], data[n]) for n in names})


def from_json(line: str) -> Event:
    """Parse one history line. Raises HistoryError (bad JSON, unknown kind, bad field)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(f"not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(data, dict):
        raise HistoryError("a history line must be a JSON object")
    cls = KINDS.get(data.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise HistoryError(f"unknown event kind {data.get('kind')!r}")
    event: Event = cls.from_dict(data)
    return event


# --- files ---


@dataclass(frozen=True, slots=True)
class Loaded:
    events: list[Event]
    torn_lines: int = 0
    """0 or 1: a last line cut short by a kill, skipped."""


def read(path: str | os.PathLike[str]) -> Loaded:
    """Every event of one history file, in file order, and whether a torn last
    line was skipped. Raises HistoryError, naming the line, for a bad line that
    is not the last one (or a last line that ends with a newline: it was
    written whole, so it is wrong, not torn)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    events: list[Event] = []
    torn = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(from_json(line))
        except HistoryError as e:
            if number == len(lines):  # no newline after it: the write was cut
                torn = 1
                continue
            raise HistoryError(f"{path}:{number}: {e}") from None
    return Loaded(events, torn)


def load(path: str | os.PathLike[str]) -> list[Event]:
    """The events of ``path``; a torn last line is skipped with a warning."""
    loaded = read(path)
    if loaded.torn_lines:
        log.warning("history_torn_line_skipped", path=str(path), torn_lines=loaded.torn_lines)
    return loaded.events


def merge(paths: Iterable[str | os.PathLike[str]]) -> list[Event]:
    """Events of several per-process files as one history sorted by ``t``
    (stable: equal times keep file order, files in the order given)."""
    events = [e for p in paths for e in load(p)]
    events.sort(key=lambda e: e.t)
    return events


def dump(path: str | os.PathLike[str], events: Iterable[Event]) -> None:
    """Write ``events`` as a whole history file (the runner's merged history)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    tmp.replace(path)


@dataclass
class HistoryWriter:
    """Appends one process's events to its history file, one flushed line each.

    ``record(Kind, **fields)`` stamps ``t`` (now, unless given) and this
    writer's ``source``. Thread-safe. Each line is one ``os.write`` on an
    ``O_APPEND`` descriptor: a kill -9 can tear at most the line being
    written, which ``read`` then skips."""

    path: str | os.PathLike[str]
    source: str
    _fd: int = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: Event) -> None:
        data = (event.to_json() + "\n").encode()
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def record(self, cls: type[Event], *, t: float | None = None, **fields: Any) -> Event:
        """Build a ``cls`` event from this process, write it and return it.
        Raises HistoryError for fields that do not fit the kind."""
        data = {"t": time.monotonic() if t is None else t, "source": self.source, **fields}
        event: Event = cls.from_dict({k: _plain(v) for k, v in data.items()})
        self.write(event)
        return event

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
