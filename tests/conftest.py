"""In-process gRPC servers and channels in tests run on the engine a sidecar
process uses (sidecar/grpc_engine.py): gRPC reads the choice when it is first
imported, and pytest loads this file before any test module."""

from sidecar.grpc_engine import prefer_posix_poller

prefer_posix_poller()
