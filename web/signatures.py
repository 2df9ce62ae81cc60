"""Verifying signed requests before anything else looks at them: Standard Webhooks, Slack, Teams."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


_STANDARD_WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
# What the sender can do about each of the library's refusals: its own words ("Missing required headers")
# name no header and no way to sign; a first sender has nothing else to go on. The recipe is in docs/rules.md.
_HOW_TO_SIGN = ("webhook-signature is v1,<base64 of HMAC-SHA256 of '<webhook-id>.<webhook-timestamp>.<body>' "
                "keyed by the base64-decoded part of the whsec_ secret after 'whsec_'> (docs/rules.md, 'Sending a webhook')")
_ADVICE = {
    "No matching signature found": f"no signature matches this body with the source's secret: {_HOW_TO_SIGN}",
    "Message timestamp too old": "webhook-timestamp is more than 5 minutes old: it is the time of sending, "
                                 "in seconds since 1970 (date +%s), and a retry signs again",
    "Message timestamp too new": "webhook-timestamp is more than 5 minutes ahead of this server's clock: it is "
                                 "the time of sending, in seconds since 1970 (date +%s)",
    "Invalid Signature Headers": "webhook-timestamp is not a number of seconds since 1970 (date +%s)",
}


class SignatureError(Exception):
    """The request is not signed by any active secret; the message says why, never the secret."""


def verify_standard_webhook(body: bytes, headers: Mapping[str, str], secrets: Iterable[str]) -> None:
    """Accept `body` if one of `secrets` signed it within ±5 minutes; raise SignatureError if not.

    Several secrets are active during a rotation: the old one keeps working until it is removed.
    `headers` is looked up by the lower-case names (werkzeug's request headers ignore case).
    """
    # The library reads these three (lower-cased) and nothing else: copying every header of the
    # request into a dict for it was half the check's time.
    signed = {name: headers[name] for name in _STANDARD_WEBHOOK_HEADERS if name in headers}
    missing = [name for name in _STANDARD_WEBHOOK_HEADERS if not signed.get(name)]
    if missing:
        raise SignatureError(f"missing {', '.join(missing)} header{'s' if len(missing) > 1 else ''}: a delivery "
                             f"carries webhook-id (its unique id), webhook-timestamp and webhook-signature; "
                             f"{_HOW_TO_SIGN}")
    reason = "no secret configured"
    for secret in secrets:
        try:
            Webhook(secret).verify(body, signed, json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = _ADVICE.get(str(exc), str(exc))
        except ValueError:
            # The library splits and base64-decodes header parts itself and raises ValueError
            # (binascii.Error, UnicodeDecodeError) on malformed ones: that is a bad signature too.
            reason = f"malformed signature headers: {_HOW_TO_SIGN}"
    raise SignatureError(reason)


def verify_slack(body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None) -> None:
    """Accept a Slack request signed with `secret` (v0, HMAC-SHA256) within ±300 s of `now` (default: the clock).

    Raises SignatureError when it is not.
    """
    if not secret:
        raise SignatureError("no Slack signing secret configured")
    stamp, signature = headers.get("X-Slack-Request-Timestamp"), headers.get("X-Slack-Signature")
    if not stamp or not signature:
        raise SignatureError("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    if not signature.isascii():
        # The verifier's compare_digest raises TypeError on str with non-ASCII text (a 500), and the header is
        # the sender's: ours is "v0=" and hex, so one that is not ASCII is a bad signature.
        raise SignatureError("bad signature or timestamp more than 300 s off")
    # The verifier compares in constant time and refuses timestamps more than five minutes off. Imported
    # here: slack_sdk costs a web process 1.4 MB, for a route only Slack's commands use.
    from slack_sdk.signature import SignatureVerifier

    try:
        valid = SignatureVerifier(secret, clock=_Clock(now)).is_valid(body, stamp, signature)
    except ValueError:  # a timestamp that is not a number
        valid = False
    if not valid:
        raise SignatureError("bad signature or timestamp more than 300 s off")


def verify_teams(body: bytes, authorization: str | None, token: str) -> None:
    """Accept a Teams outgoing-webhook request: `HMAC <base64>` of the body keyed by the base64 `token`."""
    if not token:
        raise SignatureError("no Teams security token configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme != "HMAC" or not given:
        raise SignatureError("missing 'Authorization: HMAC <signature>'")
    try:
        key = base64.b64decode(token, validate=True)
    except binascii.Error as exc:
        raise SignatureError("the configured Teams security token is not base64") from exc
    expected = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
    # Bytes: compare_digest raises TypeError on str with non-ASCII text, and the header is the sender's.
    if not hmac.compare_digest(expected.encode(), given.strip().encode("utf-8", "surrogatepass")):
        raise SignatureError("bad signature")


class _Clock:
    """The verifier's clock (slack_sdk's Clock asks only `now()`), fixed at `at` when given (known-answer
    tests), else the real one."""

    def __init__(self, at: float | None):
        self.at = at

    def now(self) -> float:
        return time.time() if self.at is None else self.at
