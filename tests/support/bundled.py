"""An app whose default workspace runs uploaded rule bundles, and what the app has compiled of its rules."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask

from web import heavy
from web.resources import get_context
from workers.workspaces import Workspace

ADMIN = "bundled-admin-token"
OPERATOR = "bundled-operator-token"
RULES = Path(__file__).parents[2] / "rules"
HELLO = "id: hello\nwhen: {manual: true}\nthen:\n  - notify: json://127.0.0.1:9/x\n    body: hi\n"

# More rule text than web.heavy.COMPILE_BYTES: its first compile in a process takes a heavy turn (~0.5 s of CPU).
LARGE = 90_000


def large_bundle(size: int = 1_000_000) -> dict[str, str]:
    """~`size` bytes of valid rules in 100 files: the example rules again and again, each copy under its own id."""
    examples = [path.read_text() for path in sorted(RULES.glob("*.yaml"))]
    files: dict[str, list[str]] = {f"r{n:03d}.yaml": [] for n in range(100)}
    total, copy = 0, 0
    while total < size:
        for text in examples:
            first_id = next(line for line in text.splitlines() if line.startswith("id: "))
            files[f"r{copy % 100:03d}.yaml"].append(text.replace(first_id, f"{first_id}-{copy}", 1))
            total += len(text)
            copy += 1
    return {name: "\n---\n".join(texts) for name, texts in files.items()}


def bundled_app(redis_url: str, *, slack_signing_secret: str = "", **config) -> Flask:
    """The app in-process; its default workspace's rules are bundles (its InLoox is nobody: no call succeeds)."""
    from app import create_app

    default = Workspace("default", "http://127.0.0.1:9", "unused", admin_token=ADMIN,
                        slack_signing_secret=slack_signing_secret)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"default": default},
                       "OPERATOR_TOKEN": OPERATOR, **config})


def upload(app: Flask, files: dict[str, str]) -> dict:
    """Upload a bundle as the workspace's admin does; its answer (201)."""
    response = app.test_client().put("/rules", json={"files": files}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 201, response.get_data(as_text=True)[:500]
    return response.get_json()


def compiled_from(app: Flask) -> str:
    """What the app's rules of the default workspace were compiled from: the bundle number, "" before any compile."""
    with app.test_request_context("/readyz"):
        app.preprocess_request()  # enters the default workspace, as a request does
        return get_context().rules.loaded_from


@contextmanager
def heavy_turn_held(app: Flask) -> Iterator[None]:
    """The process's heavy-request turn held (as by an upload in progress) for the default workspace."""
    with app.test_request_context("/readyz"):
        app.preprocess_request()
        with heavy.turn():
            yield
