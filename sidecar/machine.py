"""The elections state machine as the node applies it: bytes in, results out.

A committed entry that does not decode stops the node (``InvariantViolation``
from the runtime's point of view): a replica that skipped a command the others
applied would diverge, which is worse than stopping.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.elections import ApplyResult, ElectionsState, decode_command


class UndecodableEntry(Exception):
    """A committed entry is not an elections command; the node must stop."""


class ElectionsMachine:
    def __init__(self) -> None:
        self.state = ElectionsState()
        self.listeners: list[Callable[[ApplyResult], None]] = []

    def apply(self, index: int, data: bytes) -> object:
        try:
            command = decode_command(data)
        except Exception as exc:
            raise UndecodableEntry(f"entry {index} is not an elections command: {exc}") from exc
        result = self.state.apply(index, command)
        for listener in self.listeners:
            listener(result)
        return result

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, index: int, data: bytes) -> None:
        self.state = ElectionsState.restore(data)
