"""The worker-facing gRPC API of the sidecar."""
