"""Verifying signed requests before anything else looks at them (Standard Webhooks for now)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class SignatureError(Exception):
    """The request is not signed by any active secret; the message says why, never the secret."""


def verify_standard_webhook(body: bytes, headers: Mapping[str, str], secrets: Iterable[str]) -> None:
    """Accept `body` if one of `secrets` signed it within ±5 minutes; raise SignatureError if not.

    Several secrets are active during a rotation: the old one keeps working until it is removed.
    """
    reason = "no secret configured"
    for secret in secrets:
        try:
            Webhook(secret).verify(body, dict(headers), json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = str(exc)
        except ValueError:
            # The library splits and base64-decodes header parts itself and raises ValueError
            # (binascii.Error, UnicodeDecodeError) on malformed ones: that is a bad signature too.
            reason = "malformed signature headers"
    raise SignatureError(reason)
