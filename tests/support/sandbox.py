"""The sandbox InLoox server as a real process, with helpers for its admin API and OData calls."""
from __future__ import annotations

import requests

from tests.support.processes import Process


class SandboxServer:
    """A running `python -m sandbox`; `base_url` ends in /api/odata/, `admin_url` in /_sandbox/."""

    def __init__(self, process: Process, port: int, token: str):
        self.process = process
        self.port = port
        self.token = token
        self.base_url = f"http://127.0.0.1:{port}/api/odata/"
        self.admin_url = f"http://127.0.0.1:{port}/_sandbox/"
        self.session = requests.Session()
        self.session.headers["x-api-key"] = token

    @classmethod
    def start(cls, port: int, token: str, seed: str = "empty", data: str | None = None,
              people: tuple[str, ...] = ()) -> "SandboxServer":
        """Start the process on `port` (in memory, or on SQLite file `data`) and wait until it listens.

        `people` are `--user-token` values, `TOKEN=First Last`.
        """
        args = ["-m", "sandbox", "--port", str(port), "--token", token, "--seed", seed,
                *(arg for person in people for arg in ("--user-token", person))]
        process = Process.python(*args, *(["--data", data] if data else []), name="sandbox")
        process.wait_for_port(port)
        return cls(process, port, token)

    def stop(self) -> None:
        self.session.close()
        self.process.stop()

    # --- admin API -------------------------------------------------------------------------------
    def _admin(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, self.admin_url + path, timeout=10, **kwargs)
        response.raise_for_status()
        return response

    def reset(self, seed: str = "empty") -> None:
        """Clear data, faults, request log and notes; load `seed`."""
        self._admin("POST", "reset", json={"seed": seed})

    def paging(self, by: str) -> None:
        """Page nextLinks by "skip" (an OFFSET) or "keyset" (the default, back at each reset)."""
        self._admin("PUT", "paging", json={"by": by})

    def freeze_clock(self, frozen: bool = True) -> None:
        """Every write gets one change time while frozen (a bulk UPDATE at InLoox); thawed at each reset."""
        self._admin("PUT", "clock", json={"frozen": frozen})

    def fault(self, **rule) -> int:
        """Add a fault rule (see sandbox/faults.py); returns its id."""
        return self._admin("POST", "faults", json=rule).json()["id"]

    def faults(self) -> list[dict]:
        return self._admin("GET", "faults").json()["value"]

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def requests(self) -> list[dict]:
        """Logged requests to /api/odata/: {method, path, query, user (ContactId), status, body, at, fault}."""
        return self._admin("GET", "requests").json()["value"]

    def clear_requests(self) -> None:
        self._admin("DELETE", "requests")

    def notes(self, object_id: str | None = None) -> list[dict]:
        """Notes added with AddNote (optionally for one entity)."""
        params = {"object_id": object_id} if object_id else None
        return self._admin("GET", "notes", params=params).json()["value"]

    def add_user(self, token: str, first: str = "Ann", last: str = "Other") -> str:
        """Another person with their own token (until the next reset); returns their ContactId."""
        response = self._admin("POST", "users", json={"token": token, "first": first, "last": last,
                                                       "email": f"{first.lower()}@example.com"})
        return response.json()["ContactId"]

    def as_user(self, token: str) -> requests.Session:
        """A session that sends another person's token (see add_user)."""
        session = requests.Session()
        session.headers["x-api-key"] = token
        return session

    # --- OData calls with the token ----------------------------------------------------------------
    def get(self, path: str, **params) -> requests.Response:
        return self.session.get(self.base_url + path, params=params or None, timeout=10)

    def post(self, path: str, json=None, **kwargs) -> requests.Response:
        return self.session.post(self.base_url + path, json=json, timeout=10, **kwargs)

    def patch(self, path: str, json=None, **kwargs) -> requests.Response:
        return self.session.patch(self.base_url + path, json=json, timeout=10, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.session.delete(self.base_url + path, timeout=10, **kwargs)

    def count(self, entity_set: str, filter: str | None = None) -> int:
        """`GET <set>/$count` (with `$filter`), as an int."""
        response = self.get(f"{entity_set}/$count", **({"$filter": filter} if filter else {}))
        response.raise_for_status()
        return int(response.text)
