"""The client's safe deadline (sidecar.safe_deadline), driven with explicit times."""

from __future__ import annotations

import pytest

from sidecar.safe_deadline import SafeDeadline, default_margin_s, max_drift_covered


def test_the_grant_counts_from_the_first_campaign_send_time() -> None:
    assert SafeDeadline(5.0, 0.5).initial(100.0) == 104.5


def test_an_acknowledgement_counts_from_the_send_time_not_the_answer() -> None:
    rule = SafeDeadline(5.0, 0.5)
    assert rule.acknowledged(104.5, 101.0, 5000, 500) == 105.5


def test_the_shorter_ttl_and_the_larger_margin_win() -> None:
    rule = SafeDeadline(5.0, 0.5)
    assert rule.acknowledged(0.0, 10.0, 3000, 200) == 12.5  # the sidecar's shorter TTL
    assert rule.acknowledged(0.0, 10.0, 9000, 1000) == 14.0  # its larger margin


def test_no_renewal_and_late_answers_never_move_the_deadline_back() -> None:
    rule = SafeDeadline(5.0, 0.5)
    assert rule.acknowledged(104.5, 101.0, 0, 0) == 104.5
    assert rule.acknowledged(106.0, 101.0, 5000, 500) == 106.0


def test_the_default_margin_covers_a_drift_of_one_nineteenth() -> None:
    """Each clock's rate within ±rho: the worker stops first, at the bound exactly."""
    ttl_s = 5.0
    rho = max_drift_covered(ttl_s, default_margin_s(ttl_s))
    assert rho == pytest.approx(1 / 19)
    worker_stops = (ttl_s - default_margin_s(ttl_s)) / (1 - rho)  # a worker clock running slow
    leader_expires = ttl_s / (1 + rho)
    assert worker_stops == pytest.approx(leader_expires)
    assert default_margin_s(0.5) == 0.1  # the floor


def test_a_key_that_campaigned_before_has_no_deadline_until_an_acknowledgement() -> None:
    """Its grant may predate the new campaign: the send time proves nothing."""
    rule = SafeDeadline(5.0, 0.5)
    deadline = rule.initial(None)
    assert deadline == float("-inf")
    assert rule.acknowledged(deadline, 0, 0, 0) == float("-inf")  # not renewed
    assert rule.acknowledged(deadline, 200.0, 5000, 500) == 204.5
