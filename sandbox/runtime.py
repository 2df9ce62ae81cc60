"""The sandbox's live state, owned by the app: the store, fault rules, request log and token."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from .faults import Faults
from .requestlog import RequestLog
from .seed import ME_ID, plant
from .store import Store

_EXTENSION = "inloox_sandbox"


@dataclass(frozen=True)
class Sandbox:
    """Everything a request may touch; `user` is the ContactId the token belongs to."""

    store: Store
    faults: Faults
    log: RequestLog
    token: str
    user: str = ME_ID

    def reset(self, seed: str) -> None:
        """Clear data, notes, faults and the request log, then load `seed`."""
        self.faults.clear()
        self.log.clear()
        self.store.clear()
        plant(self.store, seed)


def get_sandbox() -> Sandbox:
    """The current app's sandbox state."""
    return current_app.extensions[_EXTENSION]


def init_app(app: Flask, sandbox: Sandbox) -> None:
    app.extensions[_EXTENSION] = sandbox
