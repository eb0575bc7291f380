"""The worker API is a contract any language can keep: a Node client written
from proto/ alone (tests/contract/node/contract.js, @grpc/grpc-js and
@grpc/proto-loader from package-lock.json) against three real sidecars,
through a follower's worker API as a worker in its pod would.

contract.js reports what it observed as JSON; this test asserts on it:
queue positions, increasing tokens, a KeepAlive reopen that keeps the token
current, the documented safe deadline, an idempotent Resign retry, and a
refusal's google.rpc.ErrorInfo read from the grpc-status-details-bin trailer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from sidecar.pb.raftsidecar.worker.v1 import worker_pb2
from tests.contract import node_client
from tests.integration.cluster import Cluster

ELECTION = "node-contract"
TTL_MS = 4000
MARGIN_MS = 400  # docs/worker-api.md: max(ttl/10, 100 ms), at most ttl/2


@pytest.fixture(scope="session")
def node() -> str:
    """``node``, with the client's packages installed (skips without node and npm)."""
    return node_client.installed()


@pytest.fixture(scope="module")
def report(node: str, cluster: Cluster) -> Any:
    leader = cluster.leader()
    home = next(n for n in cluster.nodes if n is not leader)
    result = node_client.run(node, home.api, ELECTION, TTL_MS)
    result["home"] = home.node_id
    return result


def test_campaign_reports_the_queue_position_and_grants_in_token_order(report: Any) -> None:
    assert report["status"]["node_id"] == report["home"]
    assert report["status"]["role"].startswith("RAFT_ROLE_")  # enums decode by name
    a, b = report["a"], report["b"]
    assert a["positions"] == [], "nobody held the election: granted at once"
    assert report["b_queued"] == {"position": 1, "lease_key_echoed": True}
    # [1], or [1, 1] had its Campaign been made again after an UNAVAILABLE.
    assert set(b["positions"]) == {1} and b["candidate_id"] == "node-b"
    assert a["lease_key_echoed"] and b["lease_key_echoed"], "the client-chosen key comes back"
    # uint64 as strings, uint32 durations as plain numbers (never BigInt).
    assert a["token_types"] == {"fencing_token": "string", "ttl_ms": "number"}
    assert a["token_ttl_ms"] == TTL_MS
    assert int(b["token"]) > int(a["token"]) > 0


def test_the_safe_deadline_follows_the_documented_rule(report: Any) -> None:
    assert report["documented_margin_ms"] == MARGIN_MS
    acks = [ack for ack in report["acks"] if ack["error"] is None]
    assert len(acks) == len(report["acks"]) >= 5
    for ack in acks:
        assert ack["types"] == {
            "ttl_ms": "number",
            "safety_margin_ms": "number",
            "sequence": "string",
            "fencing_token": "string",
        }
        assert ack["ttl_ms"] == TTL_MS and ack["safety_margin_ms"] == MARGIN_MS
        expected = ack["send_ms"] + ack["ttl_ms"] - ack["safety_margin_ms"]
        assert ack["deadline_ms"] == pytest.approx(expected, abs=1e-6)
        # Counted from the send, never the receipt: in the future on arrival,
        # by at most ttl - margin (less the round trip).
        assert ack["send_ms"] <= ack["receipt_ms"] < ack["deadline_ms"]
        assert 0 < ack["remaining_at_receipt_ms"] <= TTL_MS - MARGIN_MS
    deadlines = [ack["deadline_ms"] for ack in acks]
    assert deadlines == sorted(deadlines), "each acknowledgement extends the deadline"
    # Before the first acknowledgement: first Campaign send + ttl - margin.
    assert report["a"]["initial_deadline_ms"] <= deadlines[0]


def test_a_keepalive_stream_reopened_with_the_same_key_keeps_the_token(report: Any) -> None:
    reopen = report["reopen"]
    assert reopen["first_stream_status"]["code_name"] == "OK"  # a deliberate half-close
    assert reopen["valid_after_reopen"] is True
    # Still current after twice the re-attach window (ttl/4) had passed since
    # the end of stream 1: the reopen took the lease over, nothing revoked it.
    assert reopen["waited_ms"] >= 2 * reopen["window_ms"] == TTL_MS / 2
    assert reopen["valid_after_window"] is True
    for stream in (1, 2):
        sequences = [int(ack["sequence"]) for ack in report["acks"] if ack["stream"] == stream]
        assert sequences == sorted(set(sequences)), "increasing on each stream"
    # A wrong key on stream 2 is refused for that request only; the stream goes on.
    assert reopen["wrong_key_error"]["code"] == 7  # PERMISSION_DENIED
    assert reopen["wrong_key_error"]["reason"] == "LEASE_KEY_MISMATCH"
    later = [int(a["sequence"]) for a in report["acks"] if a["stream"] == 2]
    assert max(later) > int(reopen["wrong_key_sequence"])
    assert report["second_stream_status"]["code_name"] == "OK"


def test_a_refusal_carries_error_info_in_the_status_details(report: Any) -> None:
    refusal = report["refusal"]
    assert refusal["rpc"] == "Resign"
    assert refusal["code_name"] == "PERMISSION_DENIED" and refusal["status_code"] == 7
    assert refusal["error_info"] == {
        "reason": "LEASE_KEY_MISMATCH",
        "domain": "raftsidecar.dev",
        "metadata": {},
    }


def test_a_resign_retry_answers_ok_already_resigned(report: Any) -> None:
    first, retry = report["resign"]["first"], report["resign"]["retry"]
    # (ALREADY_RESIGNED only if the first call itself had to be retried after
    # an UNAVAILABLE whose attempt was applied.)
    assert first["outcome"] == "RESIGN_OUTCOME_RESIGNED" or (
        report["resign"]["first_retried"] and first["outcome"] == "RESIGN_OUTCOME_ALREADY_RESIGNED"
    )
    assert retry["outcome"] == "RESIGN_OUTCOME_ALREADY_RESIGNED"
    assert retry["ended_at_index"] == first["ended_at_index"]
    # The resigned grant is over for KeepAlive too: stop leading.
    assert report["keepalive_after_resign"]["reason"] == "LEASE_ENDED"
    assert report["keepalive_after_resign"]["code"] == 9  # FAILED_PRECONDITION
    assert report["b_resign"]["outcome"] == "RESIGN_OUTCOME_RESIGNED"


def test_the_audit_trail_agrees_with_what_the_node_client_saw(
    report: Any, cluster: Cluster
) -> None:
    home = next(n for n in cluster.nodes if n.node_id == report["home"])
    stub = home.stub()  # where the Node client's Resign calls were applied
    audit = stub.ListGrants(worker_pb2.ListGrantsRequest(election=ELECTION), timeout=5)
    assert [(g.holder, g.fencing_token) for g in audit.grants] == [
        ("node-a", int(report["a"]["token"])),
        ("node-b", int(report["b"]["token"])),
    ]
    # Both resigned: the reopened stream's lease was never revoked.
    assert [g.end_reason for g in audit.grants] == [worker_pb2.GRANT_END_REASON_RESIGNED] * 2
    assert audit.grants[0].ended_at_index == int(report["resign"]["first"]["ended_at_index"])


def test_the_node_client_needs_nothing_but_proto_and_pinned_grpc_packages() -> None:
    """No project code: Node built-ins and the two gRPC packages, pinned
    exactly; the lock file names where each package comes from."""
    source = (node_client.NODE_DIR / "contract.js").read_text()
    assert set(re.findall(r"require\('([^']+)'\)", source)) == {
        "node:crypto",
        "node:path",
        "node:perf_hooks",
        "node:util",
        "@grpc/grpc-js",
        "@grpc/proto-loader",
    }
    package = json.loads((node_client.NODE_DIR / "package.json").read_text())
    assert set(package["dependencies"]) == {"@grpc/grpc-js", "@grpc/proto-loader"}
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in package["dependencies"].values())
    lock = json.loads(node_client.LOCK_FILE.read_text())
    installed = {k: v for k, v in lock["packages"].items() if k}
    for name, version in package["dependencies"].items():
        assert installed[f"node_modules/{name}"]["version"] == version
    assert all(p["resolved"].startswith("https://registry.npmjs.org/") for p in installed.values())
    assert all(p["integrity"].startswith("sha512-") for p in installed.values())
