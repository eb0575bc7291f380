"""raft-sidecar: a Raft sidecar that grants fenced leadership tokens to settlement workers."""
