"""The worker's safe deadline, as a pure function of the times it is given.

Theory of operation. The Raft leader renews a lease, on its own clock, to
"now + TTL" at some moment at or *after* the worker sent the keep-alive.
The worker cannot know that moment, only when its request left, so it
counts from the send time: after an acknowledgement of the request sent at
``sent_at`` (on the worker's monotonic clock) the safe deadline is
``sent_at + min(ttl, answered ttl) - max(margin, answered margin)``. Before
the first acknowledgement the grant itself is the last renewal, made after
the *first* Campaign attempt was sent: ``first_sent_at + ttl - margin``.
That holds only for a lease key's first campaign. A later campaign with the
same key (the client keeps one per election and candidate, so a worker that
lost its lease resumes the grant or queue place the sidecar may still hold)
can be answered with a grant made *before* it was sent, which the Raft leader
has not renewed since and may be revoking or expiring right now: such a
lease has no deadline until its first acknowledgement (``initial(None)``).
The simulator found this (docs/simulation.md).

The margin absorbs the drift between the worker's clock and the leader's,
and the delay of the timer that reports the loss. With each clock's rate
within ``±rho`` of true time, the worker's deadline falls at most
``(ttl - margin) / (1 - rho)`` after the send, and the leader's expiry at
least ``ttl / (1 + rho)`` after its renewal, which comes later than the
send; so the worker stops first whenever ``margin >= ttl * 2 * rho / (1 +
rho)``. The default margin, a tenth of the TTL, covers ``rho`` up to 1/19
(5.26 %); ``max_drift_covered`` gives the bound for any margin, and
docs/simulation.md the simulator run that checks it.

No clock, no I/O: ``sidecar.client.Lease`` feeds it ``time.monotonic()``;
the simulator (``tests/sim/leases.py``) feeds it drifting simulated clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_MARGIN_S = 0.1


def default_margin_s(ttl_s: float) -> float:
    """The default safety margin: a tenth of the TTL, at least 100 ms."""
    return max(ttl_s / 10, MIN_MARGIN_S)


def max_drift_covered(ttl_s: float, margin_s: float) -> float:
    """The largest clock-rate error ``rho`` (each clock within ±rho of true time)
    under which ``margin_s`` keeps the worker's deadline before the leader's expiry."""
    share = margin_s / ttl_s
    return share / (2 - share)


@dataclass(frozen=True, slots=True)
class SafeDeadline:
    """The client's deadline rule for one lease: the TTL asked for and the margin floor."""

    ttl_s: float
    margin_s: float

    def initial(self, first_sent_at: float | None) -> float:
        """The deadline a grant gives, counted from the first Campaign attempt's send time;
        ``None`` when the key campaigned before: -inf, usable after an acknowledgement."""
        if first_sent_at is None:
            return float("-inf")
        return first_sent_at + self.ttl_s - self.margin_s

    def acknowledged(
        self, current: float, sent_at: float, ttl_ms: int, safety_margin_ms: int
    ) -> float:
        """The deadline after an acknowledgement of the keep-alive sent at ``sent_at``
        that answered ``ttl_ms`` (0: not renewed) and ``safety_margin_ms``; it never
        moves back from ``current``."""
        if ttl_ms == 0:
            return current
        lease_s = min(self.ttl_s, ttl_ms / 1000)
        margin_s = max(self.margin_s, safety_margin_ms / 1000)
        return max(current, sent_at + lease_s - margin_s)
