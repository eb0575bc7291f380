"""Demo input: merchants and batches of payout instructions with known totals.

Deterministic for a seed, so a demo run and its audit can be reproduced.
"""

from __future__ import annotations

import random

from settlement_demo.ledger import Ledger, Merchant, PayoutInstruction

MERCHANTS = tuple(Merchant(f"m{i:03d}", f"Merchant {i:03d}") for i in range(20))


def batch_instructions(batch_id: str, count: int, rng: random.Random) -> list[PayoutInstruction]:
    return [
        PayoutInstruction(
            id=f"{batch_id}-{i:04d}",
            batch_id=batch_id,
            merchant_id=rng.choice(MERCHANTS).id,
            amount_cents=rng.randint(100, 500_000),
        )
        for i in range(count)
    ]


def generate_batch(
    ledger: Ledger, election: str, batch_id: str, count: int = 40, seed: int | None = None
) -> list[PayoutInstruction]:
    """Add one open batch of ``count`` instructions (merchants first); returns them."""
    rng = random.Random(seed if seed is not None else batch_id)
    ledger.add_merchants(MERCHANTS)
    instructions = batch_instructions(batch_id, count, rng)
    ledger.add_batch(batch_id, election, instructions)
    return instructions
