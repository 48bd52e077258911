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

import requests

from saga.state import Alert

log = logging.getLogger("saga.alerts")


class Alerts:
    def __init__(self, webhook: str = "", hook: str | Callable[[dict[str, Any]], Any] = "") -> None:
        self.webhook = webhook
        self.hook = _resolve(hook) if isinstance(hook, str) else hook

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
            try:
                requests.post(self.webhook, json=payload, timeout=5)
            except requests.RequestException as exc:
                log.warning("alert webhook %s failed: %s", self.webhook, exc)


def _resolve(path: str) -> Callable[[dict[str, Any]], Any] | None:
    if not path:
        return None
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
