"""The Raft leader's lease deadlines (sidecar.lease_deadlines), driven with explicit times."""

from __future__ import annotations

import pytest

from sidecar.elections import Lease
from sidecar.lease_deadlines import LeaderDeadlines


def lease(election: str = "e", token: int = 7, ttl_ms: int = 1000) -> Lease:
    return Lease(election=election, holder="w", token=token, ttl_ms=ttl_ms)


def test_a_lease_without_a_deadline_gets_a_full_ttl_from_now() -> None:
    d = LeaderDeadlines()
    review = d.review([lease()], 100.0, term=3)
    assert review.due == () and review.next_due_s == 1.0
    assert d.review([lease()], 100.999, term=3).due == ()
    assert d.review([lease()], 101.0, term=3).due == (lease(),)


def test_a_due_lease_is_returned_once_until_its_expire_finishes() -> None:
    d = LeaderDeadlines()
    d.review([lease()], 0.0, term=1)
    assert d.review([lease()], 2.0, term=1).due == (lease(),)
    again = d.review([lease()], 3.0, term=1)
    assert again.due == () and again.next_due_s == float("inf")
    d.expire_finished("e", 7, committed=False)  # the deadline stays: try again
    assert d.review([lease()], 3.0, term=1).due == (lease(),)
    d.expire_finished("e", 7, committed=True)  # forgotten: a lease still live restarts
    assert d.review([lease()], 3.0, term=1).due == ()
    assert d.remaining_s("e", 7, 3.0) == 1.0


def test_a_confirmed_renewal_sets_now_plus_ttl() -> None:
    d = LeaderDeadlines()
    d.review([lease()], 0.0, term=1)
    d.renew("e", 7, 1000, 0.8, term=1)
    assert d.remaining_s("e", 7, 1.0) == 0.8
    assert d.review([lease()], 1.5, term=1).due == ()
    assert d.review([lease()], 1.8, term=1).due == (lease(),)


def test_a_new_term_extends_every_lease_by_a_full_ttl_from_its_own_now() -> None:
    """Also when the same node lost and regained leadership between two reviews:
    a deadline of its earlier term would expire a lease that another leader
    renewed meanwhile."""
    d = LeaderDeadlines()
    d.review([lease()], 0.0, term=1)
    assert d.review([lease()], 0.9, term=4).next_due_s == pytest.approx(1.0)
    assert d.review([lease()], 1.5, term=4).due == ()
    assert d.remaining_s("e", 7, 1.5) == pytest.approx(0.4)


def test_a_renewal_in_a_new_term_forgets_the_older_terms_deadlines() -> None:
    d = LeaderDeadlines()
    d.review([lease(token=7), lease("f", 9)], 0.0, term=1)
    d.renew("e", 7, 1000, 0.5, term=2)
    assert d.remaining_s("f", 9, 0.5) is None
    assert d.review([lease(token=7), lease("f", 9)], 1.2, term=2).due == ()


def test_stepping_down_forgets_every_deadline() -> None:
    d = LeaderDeadlines()
    d.review([lease()], 0.0, term=1)
    d.step_down()
    assert d.remaining_s("e", 7, 0.0) is None
    assert d.review([lease()], 5.0, term=1).due == ()  # a full TTL from the new "now"


def test_ended_grants_are_forgotten() -> None:
    d = LeaderDeadlines()
    d.review([lease(token=7)], 0.0, term=1)
    review = d.review([lease(token=8, ttl_ms=500)], 0.5, term=1)
    assert d.remaining_s("e", 7, 0.5) is None
    assert review.next_due_s == 0.5


def test_a_lease_whose_expire_is_in_flight_is_not_renewed() -> None:
    """The Expire in the log ends the grant when it commits, whatever the deadline
    says: acknowledging a full TTL would let the worker act past the next grant."""
    d = LeaderDeadlines()
    d.review([lease()], 0.0, term=1)
    assert d.review([lease()], 1.0, term=1).due == (lease(),)
    assert not d.renew("e", 7, 1000, 1.1, term=1)
    assert d.remaining_s("e", 7, 1.1) == 0.0
    d.expire_finished("e", 7, committed=False)  # the Expire failed: renewals count again
    assert d.renew("e", 7, 1000, 1.2, term=1)
    assert d.remaining_s("e", 7, 1.2) == pytest.approx(1.0)
