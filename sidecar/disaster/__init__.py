"""Offline disaster recovery: back up a stopped node's state, restore it into a
new cluster, and rebuild a cluster from one survivor of a lost quorum, with
fencing tokens that never go backwards (docs/membership.md, "Backup, restore
and recovery").

``replay`` reads a stopped data directory without changing it, ``fresh``
writes a new data directory whose log starts above every old token, and
``recover`` swaps a survivor's directory over to a new cluster in place,
crash-safely, keeping the old contents.
"""

from __future__ import annotations


class DisasterError(Exception):
    """An offline operation was refused or failed; the message is one line."""
