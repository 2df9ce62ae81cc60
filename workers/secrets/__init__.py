"""Secrets encrypted at rest: the keyring every process builds from SECRETS_KEY, and nothing else.

This package owns how a secret (an InLoox token, a webhook, Slack, Teams or subscription secret)
looks where it is stored: `fernet:<key id>:<token>`, a Fernet token (cryptography's AES-CBC +
HMAC recipe) under one of the keys of SECRETS_KEY. The key id is a short hash of the key, so a
process missing a key can say which one, and never needs to print a key or a secret to say it.

SECRETS_KEY holds one or more Fernet keys, comma-separated, newest first: new secrets are sealed
under the first, and every key still opens what it sealed (MultiFernet's rotation). `make run`
generates one into var/secrets.key. A new key is added last first (every process can then read what
the others seal under it), then moved first; `flask secrets rotate` re-seals everything under the
newest key, after which the older keys can be dropped (docs/deploy.md, "Secrets at rest").
"""
from workers.secrets._keyring import Keyring, SecretUnreadable, SecretsKeyError, generate_key, is_sealed

__all__ = ["Keyring", "SecretUnreadable", "SecretsKeyError", "generate_key", "is_sealed"]
