"""The operators\x27 admin service: runtime membership on a Unix socket (docs/membership.md)."""
