"""Keep tokens and API keys out of logs, outputs and error messages.

Why: frames are processed by services whose logs, job tables and manifests are
read by many people; a BHTOM token or an astrometry.net key that slips into one of
them is leaked for good. Secrets are read from the environment at run time only;
everything bhcore writes for people goes through :func:`redact`, and the CLI
installs :class:`RedactingFilter` so every log record is redacted as well.
"""
from __future__ import annotations

import logging
import os
import re

SECRET_ENV = ("BHTOM_TOKEN", "ASTROMETRY_NET_API_KEY", "BHCORE_NOVA_API_KEY")
"""Variables that always hold secrets; others are recognised by their names."""

_SECRET_NAME = re.compile(r"TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.I)
_MIN_LEN = 4            # shorter values would redact ordinary words
MASK = "***"

# key=value, key: value, "key": "value", Authorization: Token/Bearer value, and
# the password of a URL (scheme://user:password@host).
_PATTERNS = (
    re.compile(r"(?i)((?:api[_-]?key|apikey|token|secret|password|passwd)[\"']?\s*[=:]\s*"
               r"[\"']?)([^\s\"'&,;]+)"),
    re.compile(r"(?i)(authorization:\s*(?:token|bearer|basic)\s+)(\S+)"),
    re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]+:)([^@\s/]+)(@)", re.I),
)


def secret(name: str) -> str | None:
    """A secret from the environment (None when unset); never logged by bhcore."""
    value = os.environ.get(name, "").strip()
    return value or None


def secret_values(environ=None) -> list[str]:
    """Values of the secret variables set now, longest first (so none is half-masked)."""
    environ = os.environ if environ is None else environ
    values = {value.strip() for name, value in environ.items()
              if (name in SECRET_ENV or _SECRET_NAME.search(name))
              and len(value.strip()) >= _MIN_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text, environ=None) -> str:
    """``text`` with every known secret value and every key=value secret masked."""
    if text is None:
        return ""
    text = str(text)
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK + (m.group(3) if m.lastindex == 3
                                                           else ""), text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the message and any traceback of a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:          # a malformed record is still logged, redacted
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add the filter to every handler of ``logger`` (the root by default), once.

    A filter on a handler sees every record that reaches it, also those that
    propagate from child loggers (a logger's own filters would not).
    """
    logger = logger if logger is not None else logging.getLogger()
    if not logger.handlers:
        logging.basicConfig(level=logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    found = None
    for handler in logger.handlers:
        existing = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        if existing:
            found = existing[0]
            continue
        found = found or RedactingFilter()
        handler.addFilter(found)
    return found
