"""Registry records: a workspace as stored (JSON, every secret sealed, the admin token hashed) and back."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as random
from dataclasses import asdict

from workers.secrets import Keyring
from workers.workspaces import Limits, Workspace

# Fields a PUT body (or a workspaces file) may set; secrets are sealed before they are stored.
PLAIN_FIELDS = ("inloox_url", "rules", "chat_user_map", "alerts", "limits")
SECRET_FIELDS = ("inloox_api_key", "slack_signing_secret", "teams_security_token")
FIELDS = PLAIN_FIELDS + SECRET_FIELDS
WEBHOOK_SECRET_BYTES = 24  # Standard Webhooks asks for 24 to 64 random bytes
ADMIN_TOKEN_BYTES = 32
INCARNATION_BYTES = 16  # random: two creates of a name in two processes never make the same one


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and base64 of random bytes."""
    return "whsec_" + base64.b64encode(random.token_bytes(WEBHOOK_SECRET_BYTES)).decode()


def new_admin_token() -> str:
    """A workspace admin token: high-entropy, so a plain sha256 of it is a safe thing to store."""
    return "wsa_" + random.token_urlsafe(ADMIN_TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the registry keeps of an admin token."""
    return hashlib.sha256(token.encode()).hexdigest() if token else ""


def token_matches(given: str, stored_hash: str) -> bool:
    """True when `given` is the token whose hash is `stored_hash` (in constant time)."""
    return bool(given and stored_hash) and hmac.compare_digest(token_hash(given), stored_hash)


def empty_record(name: str, now: float) -> dict:
    """The record of a workspace that has nothing set yet: a new incarnation of `name`."""
    return {"name": name, "inloox_url": "", "inloox_api_key": "", "admin_token_sha256": "", "rules": None,
            "webhooks": {}, "slack_signing_secret": "", "teams_security_token": "", "chat_user_map": "",
            "alerts": "", "limits": asdict(Limits()), "paused": False, "created_at": now, "updated_at": now,
            "incarnation": random.token_hex(INCARNATION_BYTES)}


def incarnation(record: dict) -> str:
    """Which life of its name `record` is (Workspace.incarnation).

    Every change of a record copies the one it read, so only a create makes a new incarnation. A record created
    before incarnations were made has none: its creation time stands for it, which no later create of the name
    repeats (a delete and a create are several round trips apart). Never "" for a record: "" keeps nothing.
    """
    return record.get("incarnation") or f"created-{record['created_at']!r}"


def decode(raw: bytes | str) -> dict:
    return json.loads(raw)


def encode(record: dict) -> str:
    return json.dumps(record, sort_keys=True)


def with_fields(keyring: Keyring, record: dict, fields: dict) -> dict:
    """`record` with `fields` set; a secret equal to the one stored keeps its sealed form (so a
    repeated PUT changes nothing)."""
    out = dict(record)
    for name, value in fields.items():
        if name in SECRET_FIELDS:
            out[name] = _sealed_unless_same(keyring, record.get(name, ""), value or "")
        elif name == "limits":
            out[name] = asdict(Limits(**(value or {})))
        else:
            out[name] = value
    return out


def _sealed_unless_same(keyring: Keyring, stored: str, wanted: str) -> str:
    if not wanted:
        return ""
    if stored and same_secret(keyring, stored, wanted):
        return stored
    return keyring.seal(wanted)


def same_secret(keyring: Keyring, stored: str, wanted: str) -> bool:
    """True when the sealed `stored` holds `wanted` (False when it cannot be read: a new value fixes it)."""
    from workers.secrets import SecretUnreadable

    try:
        return hmac.compare_digest(keyring.unseal(stored).encode(), wanted.encode())
    except SecretUnreadable:
        return False


def to_workspace(keyring: Keyring, record: dict) -> Workspace:
    """The Workspace a record describes, secrets unsealed; raises SecretUnreadable."""
    now_secrets = {source: [keyring.unseal(s["secret"]) for s in hook["secrets"]]
                   for source, hook in record["webhooks"].items()}
    return Workspace(
        name=record["name"], inloox_url=record["inloox_url"],
        inloox_api_key=_unsealed(keyring, record["inloox_api_key"]),
        admin_token_hash=record["admin_token_sha256"], rules_path=record["rules"], webhook_sources=now_secrets,
        slack_signing_secret=_unsealed(keyring, record["slack_signing_secret"]),
        teams_security_token=_unsealed(keyring, record["teams_security_token"]),
        chat_user_map=record["chat_user_map"], limits=Limits(**record["limits"]),
        paused=record["paused"], alerts=record["alerts"], incarnation=incarnation(record),
    )


def _unsealed(keyring: Keyring, sealed: str) -> str:
    return keyring.unseal(sealed) if sealed else ""


def live_secrets(record: dict, now: float) -> dict:
    """`record` without webhook secrets whose overlap after a rotation has ended."""
    hooks = {source: {**hook, "secrets": [s for s in hook["secrets"] if not s["expires_at"] or s["expires_at"] > now]}
             for source, hook in record["webhooks"].items()}
    return {**record, "webhooks": hooks}


def public(record: dict) -> dict:
    """A record as the API shows it: never a secret, only whether each is set."""
    shown = {name: record[name] for name in ("name", "inloox_url", "rules", "chat_user_map", "alerts", "limits",
                                             "paused", "created_at", "updated_at")}
    shown["secrets_set"] = sorted(name for name in SECRET_FIELDS if record[name])
    shown["admin_token_set"] = bool(record["admin_token_sha256"])
    shown["webhooks"] = sorted(record["webhooks"])
    return shown


def sealed_values(record: dict) -> list[tuple[tuple, str]]:
    """(path, sealed secret) of every secret in `record`, for re-sealing."""
    found = [((name,), record[name]) for name in SECRET_FIELDS if record[name]]
    for source, hook in record["webhooks"].items():
        found += [(("webhooks", source, "secrets", i, "secret"), s["secret"]) for i, s in enumerate(hook["secrets"])]
    return found
