"""The elections state machine as the node applies it: bytes in, results out.

Theory of operation
-------------------
Two gates keep the replicated log clean, one on each side of it.

* **Before the log** (``refusal``): the Raft leader decodes every command
  before it appends it, whether its own worker API proposed it or a peer
  forwarded it, and checks what a proposer may ask for: the operator's TTL
  range, and that a peer forwards only what a follower's sidecar proposes
  (Campaign, Resign, Withdraw, Revoke; never Expire, which only the Raft
  leader's own clock decides). The caller hears INVALID_ARGUMENT and nothing
  enters the log.

* **After the log** (``apply``): a committed entry that still does not decode
  (written by a faulty or older build, or planted on disk) is *skipped*, the
  same way on every replica, because decoding is a pure function of the
  bytes. It is logged at error level and counted
  (``raft_sidecar_undecodable_entries_total``, which an alert watches). Before
  this rule one such entry made every replica exit, again at every restart,
  since each re-applies the committed log: a cluster-wide crash loop that no
  restart could end. Skipping loses nothing that was ever valid.

The rule has one cost: a command version that a replica does not understand
is skipped there while newer replicas apply it. Commands therefore change
version only once every replica decodes the new one (docs/elections.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from sidecar.elections import (
    ApplyResult,
    Campaign,
    CommandError,
    ElectionsState,
    Expire,
    InvalidArgument,
    decode_command,
    validate_ttl_ms,
)

_log = structlog.get_logger("sidecar.machine")


@dataclass(frozen=True, slots=True)
class SkippedEntry:
    """What applying an undecodable committed entry returns: nothing changed."""

    index: int
    reason: str


class ElectionsMachine:
    def __init__(self, *, ttl_min_ms: int = 1, ttl_max_ms: int = 86_400_000) -> None:
        self.state = ElectionsState()
        self.listeners: list[Callable[[ApplyResult], None]] = []
        self.skip_listeners: list[Callable[[SkippedEntry], None]] = []
        self._ttl_min_ms = ttl_min_ms
        self._ttl_max_ms = ttl_max_ms
        self.skipped_entries = 0
        """Committed entries skipped as undecodable since this process started."""

    def refusal(self, data: bytes, *, forwarded: bool) -> str | None:
        """Why ``data`` must not enter the log (one line), or None if it may.

        ``forwarded`` is true for a command a peer asks the leader to append.
        """
        try:
            command = decode_command(data)
        except CommandError as exc:
            return f"not a valid elections command: {exc}"
        if forwarded and isinstance(command, Expire):
            return "expire is proposed only by the Raft leader, never forwarded by a peer"
        if isinstance(command, Campaign):
            try:
                validate_ttl_ms(
                    command.ttl_ms, min_ttl_ms=self._ttl_min_ms, max_ttl_ms=self._ttl_max_ms
                )
            except InvalidArgument as exc:
                return str(exc)
        return None

    def apply(self, index: int, data: bytes) -> ApplyResult | SkippedEntry:
        try:
            command = decode_command(data)
        except CommandError as exc:
            return self._skip(index, len(data), str(exc))
        result = self.state.apply(index, command)
        for listener in self.listeners:
            listener(result)
        return result

    def _skip(self, index: int, size: int, reason: str) -> SkippedEntry:
        self.skipped_entries += 1
        # The bytes themselves are never logged: they are unvalidated input.
        _log.error(
            "undecodable_entry_skipped",
            index=index,
            size_bytes=size,
            error=reason,
            hint="every replica skips it alike; find who proposed it (peer port exposure, "
            "a build with another command version)",
        )
        skipped = SkippedEntry(index, reason)
        for listener in self.skip_listeners:
            listener(skipped)
        return skipped

    def snapshot(self) -> bytes:
        return self.state.snapshot()

    def restore(self, index: int, data: bytes) -> None:
        self.state = ElectionsState.restore(data)
