"""structlog configured once: JSON lines on stderr, with the node id in every line.

Modules log key-values (``log.info("snapshot_taken", index=..., term=...)``);
this module decides the rendering. Tests assert on events with
``structlog.testing.capture_logs``.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(node_id: str, level: str = "info", *, key: str = "node_id") -> None:
    """Render JSON, bind ``node_id`` (as ``key``) to every line, drop lines below ``level``."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(**{key: node_id})
