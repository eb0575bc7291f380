"""etcd's v3 gRPC API for the etcd baseline bench, compiled at bench time.

etcd's own ``.proto`` files import gogoproto and grpc-gateway annotations, so
they do not compile with a plain protoc. Protobuf only needs field numbers and
types to agree on the wire, and gRPC only needs the full method names, so this
module carries the subset the bench calls (``KV.Range``, ``Lease.LeaseGrant``,
``Lease.LeaseKeepAlive``, ``Maintenance.Status``, ``Election.Campaign`` and
``Election.Resign``), field numbers copied from etcd's
``api/etcdserverpb/rpc.proto``, ``api/mvccpb/kv.proto`` and
``v3electionpb/v3election.proto`` (unchanged from 3.4 to 3.6), and compiles
it with the bundled ``grpc_tools.protoc`` into the bench's temp dir on first
use.

So both sides of the comparison are called the same way: synchronous Python
gRPC stubs over one HTTP/2 channel per client group.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

RPC_PROTO = """
syntax = "proto3";
package etcdserverpb;

message ResponseHeader {
  uint64 cluster_id = 1;
  uint64 member_id = 2;
  int64 revision = 3;
  uint64 raft_term = 4;
}
message KeyValue {
  bytes key = 1;
  int64 create_revision = 2;
  int64 mod_revision = 3;
  int64 version = 4;
  bytes value = 5;
  int64 lease = 6;
}
message RangeRequest {
  bytes key = 1;
  bytes range_end = 2;
  int64 limit = 3;
  int64 revision = 4;
  bool serializable = 7;
}
message RangeResponse {
  ResponseHeader header = 1;
  repeated KeyValue kvs = 2;
  bool more = 3;
  int64 count = 4;
}
message LeaseGrantRequest {
  int64 TTL = 1;
  int64 ID = 2;
}
message LeaseGrantResponse {
  ResponseHeader header = 1;
  int64 ID = 2;
  int64 TTL = 3;
  string error = 4;
}
message LeaseKeepAliveRequest {
  int64 ID = 1;
}
message LeaseKeepAliveResponse {
  ResponseHeader header = 1;
  int64 ID = 2;
  int64 TTL = 3;
}
message StatusRequest {}
message StatusResponse {
  ResponseHeader header = 1;
  string version = 2;
  int64 dbSize = 3;
  uint64 leader = 4;
  uint64 raftIndex = 5;
  uint64 raftTerm = 6;
}
service KV {
  rpc Range(RangeRequest) returns (RangeResponse);
}
service Lease {
  rpc LeaseGrant(LeaseGrantRequest) returns (LeaseGrantResponse);
  rpc LeaseKeepAlive(stream LeaseKeepAliveRequest) returns (stream LeaseKeepAliveResponse);
}
service Maintenance {
  rpc Status(StatusRequest) returns (StatusResponse);
}
"""

ELECTION_PROTO = """
syntax = "proto3";
package v3electionpb;
import "etcd_rpc.proto";

message CampaignRequest {
  bytes name = 1;
  int64 lease = 2;
  bytes value = 3;
}
message CampaignResponse {
  etcdserverpb.ResponseHeader header = 1;
  LeaderKey leader = 2;
}
message LeaderKey {
  bytes name = 1;
  bytes key = 2;
  int64 rev = 3;
  int64 lease = 4;
}
message ResignRequest {
  LeaderKey leader = 1;
}
message ResignResponse {
  etcdserverpb.ResponseHeader header = 1;
}
service Election {
  rpc Campaign(CampaignRequest) returns (CampaignResponse);
  rpc Resign(ResignRequest) returns (ResignResponse);
}
"""


@dataclass(frozen=True)
class EtcdModules:
    """The generated message (``*_pb2``) and stub (``*_pb2_grpc``) modules."""

    rpc: ModuleType
    rpc_grpc: ModuleType
    election: ModuleType
    election_grpc: ModuleType


_loaded: EtcdModules | None = None


def load(work_dir: Path) -> EtcdModules:
    """Compile the subset into ``work_dir`` (the bench's temp dir, removed with
    it) once per process and import it.

    Raises RuntimeError when protoc fails (a broken grpcio-tools install).
    """
    global _loaded  # noqa: PLW0603 - one compilation per process
    if _loaded is not None:
        return _loaded
    from grpc_tools import protoc  # type: ignore[import-untyped]  # noqa: PLC0415

    out = work_dir / "etcd-proto"
    out.mkdir(parents=True, exist_ok=True)
    (out / "etcd_rpc.proto").write_text(RPC_PROTO)
    (out / "etcd_election.proto").write_text(ELECTION_PROTO)
    code = protoc.main(
        [
            "protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "etcd_rpc.proto",
            "etcd_election.proto",
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on etcd's API subset in {out}")
    sys.path.insert(0, str(out))
    _loaded = EtcdModules(
        rpc=importlib.import_module("etcd_rpc_pb2"),
        rpc_grpc=importlib.import_module("etcd_rpc_pb2_grpc"),
        election=importlib.import_module("etcd_election_pb2"),
        election_grpc=importlib.import_module("etcd_election_pb2_grpc"),
    )
    return _loaded
