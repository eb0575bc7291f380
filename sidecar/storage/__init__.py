"""Durable storage of the Raft state: write-ahead log, hard state, snapshots."""
