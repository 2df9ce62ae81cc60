"""The sandbox's live state, owned by the app: the store, fault rules, request log and token."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from flask import Flask, current_app

from .faults import Faults
from .requestlog import RequestLog
from .seed import ME_ID, add_person, check_seed, plant
from .store import Store

_EXTENSION = "inloox_sandbox"


@dataclass(frozen=True)
class Sandbox:
    """Everything a request may touch; `token` belongs to the main user (ME_ID), `users` are more tokens."""

    store: Store
    faults: Faults
    log: RequestLog
    token: str
    user: str = ME_ID
    users: dict[str, str] = field(default_factory=dict)  # extra token → ContactId (other people)
    people: dict[str, tuple[str, str]] = field(default_factory=dict)  # token → name, from the command line
    # How nextLinks go on: "keyset" (after the last row's order values, when the order allows) or "skip" (an
    # OFFSET, as an OData server that pages by $skip does: a row that moves ahead meanwhile shifts the rest).
    paging: dict = field(default_factory=lambda: {"by": "keyset"})

    def __post_init__(self):
        self._add_people()

    def user_of(self, token: str) -> str | None:
        """The ContactId a token belongs to, or None; compared in constant time, as a server should."""
        found = None
        for known, contact_id in [(self.token, self.user), *self.users.items()]:
            if hmac.compare_digest(token.encode(), known.encode()):
                found = contact_id
        return found

    def reset(self, seed: str) -> None:
        """Clear data, notes, faults, extra tokens, the request log, the paging style and a frozen clock, then load
        `seed`.

        An unknown seed raises BadRequest before anything is cleared."""
        check_seed(seed)
        self.faults.clear()
        self.log.clear()
        self.users.clear()
        self.store.clear()
        self.paging["by"] = "keyset"
        self.store.clock.freeze(False)
        plant(self.store, seed)
        self._add_people()

    def _add_people(self) -> None:
        # People named at start-up (e.g. the automation's own user) survive resets, unlike
        # those added through the admin API by a test.
        for token, (first, last) in self.people.items():
            self.users[token] = add_person(self.store, first, last, f"{first.lower()}@example.com")


def get_sandbox() -> Sandbox:
    """The current app's sandbox state."""
    return current_app.extensions[_EXTENSION]


def init_app(app: Flask, sandbox: Sandbox) -> None:
    app.extensions[_EXTENSION] = sandbox
