"""The chaos suite: real sidecars and workers under a seeded nemesis (docs/chaos.md)."""
