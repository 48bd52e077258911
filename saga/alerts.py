"""Alerts for people: every timeout and every run that needs a person, logged and sent on.

A hook is a `"module:function"` taking one dict, and/or a webhook URL that gets the same
dict as JSON. Sending is best effort and off the caller's thread: an alert never blocks
or fails a saga.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from saga.events import Alert
from saga.settings import redacted

log = logging.getLogger("saga.alerts")


class Alerts:
    def __init__(self, webhook: str = "", hook: str | Callable[[dict[str, Any]], Any] = "") -> None:
        self.webhook = webhook
        self.hook = resolve(hook) if isinstance(hook, str) else hook

    def send(self, run_id: str, saga: str, alert: Alert) -> None:
        payload = {"run_id": run_id, "saga": saga, "reason": alert.reason, "step": alert.step,
                   "message": alert.message}
        log.warning("alert %s: run %s (%s) %s", alert.reason, run_id, saga, alert.message)
        if self.hook or self.webhook:
            threading.Thread(target=self._deliver, args=(payload,), daemon=True,
                             name="saga-alert").start()

    def _deliver(self, payload: dict[str, Any]) -> None:
        if self.hook:
            try:
                self.hook(payload)
            except Exception:
                log.exception("alert hook failed")
        if self.webhook:
            # Only the webhook's host is logged: its path or query is often the secret.
            where = redacted(self.webhook, path=False)
            try:
                response = requests.post(self.webhook, json=payload, timeout=5)
            except requests.RequestException as exc:
                log.warning("alert webhook %s failed: %s", where, scrub(str(exc), self.webhook))
                return
            if response.status_code >= 400:
                log.warning("alert webhook %s answered %s", where, response.status_code)


def resolve(path: str) -> Callable[[dict[str, Any]], Any] | None:
    """The function a `"module:function"` SAGA_ALERT_HOOK names; ValueError saying why not."""
    if not path:
        return None
    module, _, name = path.partition(":")
    try:
        target = getattr(importlib.import_module(module), name) if name else None
    except ImportError as exc:
        raise ValueError(f"SAGA_ALERT_HOOK={path!r}: cannot import {module!r}: {exc} "
                         "(check PYTHONPATH)") from None
    except AttributeError:
        target = None
    if not callable(target):
        raise ValueError(f"SAGA_ALERT_HOOK={path!r} names no function: give 'module:function'")
    return target


def scrub(text: str, url: str) -> str:
    """`text` (an HTTP library's error) without the parts of `url` that may be secret."""
    parts = urlsplit(url)
    secrets = [url, parts.path + ("?" + parts.query if parts.query else ""),
               parts.path, parts.query, parts.password or ""]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) > 1:
            text = text.replace(secret, "…")
    return text
