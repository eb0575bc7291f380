"""The committed generated code in sidecar/pb matches a fresh generation.

Regenerates into a temporary directory with scripts/gen_proto.py (the same
script `make proto` runs) and compares byte for byte, so a proto edit without
`make proto`, or a hand edit of generated code, fails here with the file named.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "sidecar" / "pb"
GENERATOR = REPO_ROOT / "scripts" / "gen_proto.py"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh_root = tmp_path / "pb"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(fresh_root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"gen_proto.py failed:\n{result.stdout}{result.stderr}"

    committed, fresh = _tree(COMMITTED), _tree(fresh_root)
    problems = []
    for name in sorted(committed.keys() | fresh.keys()):
        where = f"sidecar/pb/{name}"
        if name not in committed:
            problems.append(f"{where}: missing")
        elif name not in fresh:
            problems.append(f"{where}: not produced by the generator (stray file)")
        elif committed[name] != fresh[name]:
            problems.append(f"{where}: differs from a fresh generation")
    assert not problems, (
        "generated code is stale; run `make proto` and commit the result:\n  "
        + "\n  ".join(problems)
    )


def test_generated_modules_import_under_sidecar_pb() -> None:
    from sidecar.pb.raftsidecar.peer.v1 import peer_pb2, peer_pb2_grpc  # noqa: PLC0415
    from sidecar.pb.raftsidecar.worker.v1 import worker_pb2, worker_pb2_grpc  # noqa: PLC0415

    # The descriptor keeps buf's file name (reflection relies on it) while the
    # classes report the module they really live in (pickle relies on that).
    assert peer_pb2.DESCRIPTOR.name == "raftsidecar/peer/v1/peer.proto"
    assert worker_pb2.DESCRIPTOR.name == "raftsidecar/worker/v1/worker.proto"
    assert peer_pb2.DeliverRequest.__module__ == "sidecar.pb.raftsidecar.peer.v1.peer_pb2"
    assert hasattr(peer_pb2_grpc, "RaftPeerServiceStub")
    assert hasattr(worker_pb2_grpc, "ElectionServiceServicer")
