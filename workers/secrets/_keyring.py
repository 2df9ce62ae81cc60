"""The keyring: seal, unseal and re-seal secrets under the keys of SECRETS_KEY."""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from cryptography.fernet import Fernet, InvalidToken

SCHEME = "fernet"
_KEY_ID_LENGTH = 8  # hex characters of sha256(key): enough to tell a handful of keys apart


class SecretsKeyError(ValueError):
    """SECRETS_KEY is missing or not a list of Fernet keys; the message says which entry, never the key."""


class SecretUnreadable(ValueError):
    """A sealed secret this keyring cannot open; the message names the key id it needs, never the secret."""

    def __init__(self, message: str, key_id: str = ""):
        super().__init__(message)
        self.key_id = key_id


def generate_key() -> str:
    """A new random Fernet key (url-safe base64 of 32 bytes), as SECRETS_KEY takes it."""
    return Fernet.generate_key().decode()


def is_sealed(value: str) -> bool:
    """True when `value` looks like a sealed secret (so a second seal would be a mistake)."""
    return isinstance(value, str) and value.startswith(SCHEME + ":")


def key_id(key: str) -> str:
    """The short public name of a key: the first hex characters of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:_KEY_ID_LENGTH]


class Keyring:
    """The keys of one process, newest first; held for the life of the process."""

    def __init__(self, keys: Sequence[str]):
        keys = [k.strip() for k in keys if k and k.strip()]
        if not keys:
            raise SecretsKeyError("SECRETS_KEY is empty: set one or more Fernet keys, comma-separated, newest first "
                                  "(make run generates var/secrets.key)")
        self._fernets: dict[str, Fernet] = {}
        self._tag_keys: dict[str, bytes] = {}
        for place, key in enumerate(keys, 1):
            try:
                self._fernets.setdefault(key_id(key), Fernet(key))
                self._tag_keys.setdefault(key_id(key), base64.urlsafe_b64decode(key))
            except ValueError:
                raise SecretsKeyError(f"SECRETS_KEY: key {place} of {len(keys)} is not a Fernet key "
                                      "(32 url-safe base64-encoded bytes)") from None
        self.newest = key_id(keys[0])

    @classmethod
    def from_config(cls, config: Mapping) -> "Keyring":
        """The keyring of SECRETS_KEY (comma-separated keys, newest first)."""
        return cls((config.get("SECRETS_KEY") or "").split(","))

    @property
    def key_ids(self) -> list[str]:
        """The ids of this keyring's keys, newest first."""
        return list(self._fernets)

    def tags(self, data: bytes) -> list[str]:
        """HMAC-SHA256 of `data` under each key, newest first: a proof only a holder of SECRETS_KEY can make
        (the dashboard's session cookie), checked against each so a key rotation ends no session early."""
        return [hmac.new(raw, b"inloox-automation tag\0" + data, hashlib.sha256).hexdigest()
                for raw in self._tag_keys.values()]

    def seal(self, text: str) -> str:
        """`text` encrypted under the newest key, as `fernet:<key id>:<token>`."""
        token = self._fernets[self.newest].encrypt(text.encode()).decode()
        return f"{SCHEME}:{self.newest}:{token}"

    def unseal(self, sealed: str) -> str:
        """The text of a sealed secret; raises SecretUnreadable naming the key it needs."""
        scheme, _, rest = (sealed or "").partition(":")
        wanted, _, token = rest.partition(":")
        if scheme != SCHEME or not wanted or not token:
            raise SecretUnreadable("not a sealed secret (expected fernet:<key id>:<token>)")
        fernet = self._fernets.get(wanted)
        if fernet is None:
            raise SecretUnreadable(f"sealed with key {wanted}, which SECRETS_KEY does not hold "
                                   f"(it holds {', '.join(self.key_ids)})", wanted)
        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(f"the secret sealed with key {wanted} is damaged (it does not verify)",
                                   wanted) from None

    def missing_key(self, sealed: str) -> str:
        """The id of the key `sealed` was sealed with when this keyring does not hold it; "" otherwise
        (held, or not a sealed secret at all)."""
        if not is_sealed(sealed):
            return ""
        wanted = sealed.split(":", 2)[1]
        return "" if wanted in self._fernets else wanted

    def rotated(self, sealed: str) -> str:
        """`sealed` re-sealed under the newest key (unchanged when it already is)."""
        if self.is_current(sealed):
            self.unseal(sealed)  # still check it opens: a damaged secret should not pass as rotated
            return sealed
        return self.seal(self.unseal(sealed))

    def is_current(self, sealed: str) -> bool:
        """True when `sealed` is under the newest key."""
        return (sealed or "").startswith(f"{SCHEME}:{self.newest}:")
