"""The state digest that RaftSidecarReplicasDisagree compares across
replicas, and the term that RaftSidecarTwoLeadersInOneTerm pairs with the
role: real ElectionsState replicas fed the same (or a different) log."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.elections import Campaign, Command, ElectionsState, Resign, lease_key_digest
from sidecar.metrics import STATE_DIGEST_EVERY_ENTRIES, SidecarMetrics, state_digest
from sidecar.raft import Role, SoftState

KEY_A = lease_key_digest("digest-key-a-000000000")
KEY_B = lease_key_digest("digest-key-b-000000000")


def campaign(election: str, candidate: str, key: str = KEY_A) -> Campaign:
    return Campaign(
        election=election, candidate=candidate, ttl_ms=1000, key_digest=key, proposed_at_unix_ms=1
    )


class Replica:
    """One replica's state machine and metrics, applying a log in order."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SidecarMetrics(self.registry)
        self.state = ElectionsState()

    def apply(self, index: int, command: Command) -> None:
        result = self.state.apply(index, command)
        self.metrics.on_apply(result)
        self.metrics.on_applied(result.index, self.state)

    def published(self) -> tuple[float | None, float | None]:
        get = self.registry.get_sample_value
        return get("raft_sidecar_state_digest_index"), get("raft_sidecar_state_digest")


def log_of(n: int, *, holder_at_3: str = "w1") -> list[Command]:
    commands: list[Command] = [campaign("eur", "w0"), campaign("eur", "w9", KEY_B)]
    commands.append(campaign("usd", holder_at_3))
    commands += [campaign(f"e{i}", "w2") for i in range(n - len(commands))]
    return commands


def test_replicas_that_applied_one_log_publish_equal_digests_at_the_same_indices() -> None:
    a, b = Replica(), Replica()
    assert a.published() == (0.0, 0.0)  # nothing yet
    published: dict[float, float] = {}
    for index, command in enumerate(log_of(3 * STATE_DIGEST_EVERY_ENTRIES), start=1):
        a.apply(index, command)
        b.apply(index, command)
        assert a.published() == b.published()
        at, digest = a.published()
        assert at is not None and digest is not None
        if at:
            published[at] = digest
    # One digest per block of indices, taken at its first applied command.
    assert sorted(published) == [STATE_DIGEST_EVERY_ENTRIES * k for k in (1, 2, 3)]
    assert len(set(published.values())) == 3, "the state changed between them"


def test_a_replica_with_another_holder_publishes_another_digest() -> None:
    good, diverged = Replica(), Replica()
    n = STATE_DIGEST_EVERY_ENTRIES
    logs = zip(log_of(n), log_of(n, holder_at_3="w7"), strict=True)
    for index, (g, d) in enumerate(logs, start=1):
        good.apply(index, g)
        diverged.apply(index, d)
    (at_good, digest_good), (at_diverged, digest_diverged) = good.published(), diverged.published()
    assert at_good == at_diverged == n
    assert digest_good != digest_diverged


def test_the_digest_covers_holder_token_and_queue_and_fits_a_float() -> None:
    state = ElectionsState()
    empty = state_digest(state)
    state.apply(1, campaign("eur", "w0"))
    held = state_digest(state)
    state.apply(2, campaign("eur", "w1", KEY_B))
    queued = state_digest(state)
    state.apply(3, Resign(election="eur", key_digest=KEY_A, token=1, proposed_at_unix_ms=2))
    handed_over = state_digest(state)  # w1 holds now, with token 3
    assert len({empty, held, queued, handed_over}) == 4
    for digest in (empty, held, queued, handed_over):
        assert 0 <= digest < 2**52 and float(digest) == digest


def test_a_restarted_replica_publishes_at_its_first_command() -> None:
    """After a restart (or a snapshot install) the replica does not wait for
    the next block: its first applied command publishes."""
    replica = Replica()
    replica.state.apply(1, campaign("eur", "w0"))  # state as restored, up to index 1
    replica.apply(70, campaign("usd", "w1"))
    assert replica.published() == (70.0, float(state_digest(replica.state)))
    replica.apply(71, campaign("gbp", "w1"))
    assert replica.published()[0] == 70.0


def test_the_term_is_published_with_the_role() -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    metrics.on_soft_state(SoftState(role=Role.LEADER, leader_id="a", term=7))
    assert registry.get_sample_value("raft_sidecar_raft_term") == 7
    assert registry.get_sample_value("raft_sidecar_raft_role", {"role": "leader"}) == 1
