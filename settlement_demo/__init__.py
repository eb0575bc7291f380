"""Settlement demo: a fenced ledger and a batch worker that leads through raft-sidecar."""
