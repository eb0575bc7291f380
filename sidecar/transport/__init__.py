"""The gRPC peer transport: carries the Raft core's messages between sidecars.

``codec`` is the only translation between the core's dataclasses and the
protobufs of ``raftsidecar.peer.v1``; ``peer`` holds the server, the
per-peer clients and the ``Transport`` that owns them (docs/transport.md).
"""
