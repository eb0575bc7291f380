"""Elections states with real grants, for the disaster-recovery tests."""

from __future__ import annotations

import hashlib

from sidecar.elections import Campaign, ElectionsState, Resign, decode_command, encode_command


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def campaign(election: str, candidate: str, ttl_ms: int = 60_000) -> bytes:
    return encode_command(
        Campaign(
            election=election,
            candidate=candidate,
            ttl_ms=ttl_ms,
            key_digest=digest(f"key-{election}-{candidate}"),
            proposed_at_unix_ms=1_700_000_000_000,
        )
    )


def resign(election: str, candidate: str) -> bytes:
    return encode_command(
        Resign(
            election=election,
            key_digest=digest(f"key-{election}-{candidate}"),
            token=None,
            proposed_at_unix_ms=1_700_000_000_000,
        )
    )


def state_with_grants() -> bytes:
    """eur: a resigned at 3, b granted at 5 (queued at 4); usd: c granted at 7."""
    state = ElectionsState()
    commands = {
        3: campaign("eur", "a"),
        4: campaign("eur", "b"),
        5: resign("eur", "a"),
        7: campaign("usd", "c"),
    }
    for index, data in sorted(commands.items()):
        state.apply(index, decode_command(data))
    return state.snapshot()
