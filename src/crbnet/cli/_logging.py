"""How the command line shows the library's log records: ``crbnet: note: ...`` (INFO) and
``crbnet: warning: ...`` on stderr. The library itself only logs (``logging.getLogger``)."""

from __future__ import annotations

import logging
import sys


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "note" if record.levelno < logging.WARNING else record.levelname.lower()
        return f"crbnet: {kind}: {record.getMessage()}"


def configure() -> None:
    """Send records of the ``crbnet`` loggers at INFO and above to stderr (once per process).
    The stream is looked up at each record, so a redirected ``sys.stderr`` is honoured."""
    logger = logging.getLogger("crbnet")
    if any(getattr(h, "_crbnet_cli", False) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(_Format())
    handler._crbnet_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):
    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
