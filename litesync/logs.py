"""Log lines that name what they are about: the database and, when one is concerned, the
replica. Text lines carry ``db -> replica: `` in front of the message; JSON lines carry
``db`` and ``replica`` fields as well."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, MutableMapping

#: Record attributes the JSON formatter copies into each line when a log call set them.
FIELDS = ("db", "replica")


class Labelled(logging.LoggerAdapter):
    """A logger for one database, or one database and one of its replicas."""

    def __init__(self, logger: logging.Logger, db: str, replica: str | None = None) -> None:
        fields = {"db": db} if replica is None else {"db": db, "replica": replica}
        super().__init__(logger, fields)
        self.label = db if replica is None else f"{db} -> {replica}"

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}  # type: ignore[dict-item]
        return f"{self.label}: {msg}", kwargs


class TextFormatter(logging.Formatter):
    """``TIME LEVEL message``, the time in UTC as RFC 3339 (``2026-11-22T14:01:00.123Z``):
    the form listings print and ``restore --timestamp`` takes, so a time read off the log
    is a time to restore to."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
        super().__init__(fmt)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, message, and db/replica when known."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
                "msg": record.getMessage()}
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line)
