"""Secrets are Fernet tokens as cryptography makes them, opened without loading cryptography (issue 22).

The keyring makes its tokens itself (workers/secrets/_fernet.py), cryptography's Fernet serving as
the reference: secrets sealed before (by cryptography) must still open, and a registry written now
must still open with cryptography should the keyring ever go back to it.
"""
from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet as Reference

from workers.secrets import Keyring, SecretUnreadable, generate_key
from workers.secrets import _fernet

ROOT = Path(__file__).resolve().parents[2]
KEY = generate_key()
TEXTS = ["", "s", "ilx_" + "x" * 11, "ilx_" + "x" * 12, "ilx_" + "x" * 13, "Grüße, 秘密 🔑", "t" * 1000]


@pytest.mark.parametrize("text", TEXTS)
def test_a_secret_sealed_by_cryptography_opens_and_one_sealed_now_opens_with_cryptography(text):
    keyring = Keyring([KEY])
    before = f"fernet:{keyring.newest}:{Reference(KEY).encrypt(text.encode()).decode()}"
    assert keyring.unseal(before) == text
    token = keyring.seal(text).split(":", 2)[2]
    assert Reference(KEY).decrypt(token).decode() == text


@pytest.mark.parametrize("byte", [0, 1, 9, 25, 40, -1])  # version, time, IV, ciphertext, signature
def test_a_secret_changed_anywhere_is_refused_as_damaged(byte):
    keyring = Keyring([KEY])
    scheme, key_id, token = keyring.seal("ilx_token_1").split(":", 2)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[byte] ^= 0x01
    with pytest.raises(SecretUnreadable, match="damaged"):
        keyring.unseal(f"{scheme}:{key_id}:{base64.urlsafe_b64encode(bytes(raw)).decode()}")


@pytest.mark.parametrize("token", ["not base64 ü", "gAAAAA", base64.urlsafe_b64encode(b"\x80" + bytes(56)).decode()])
def test_what_is_not_a_token_is_refused_as_damaged(token):
    keyring = Keyring([KEY])
    with pytest.raises(SecretUnreadable, match="damaged"):
        keyring.unseal(f"fernet:{keyring.newest}:{token}")


@pytest.mark.parametrize("length", range(0, 34))
def test_openssl_and_cryptography_encrypt_alike_where_both_can(length):
    """The AES-CBC of a Python whose OpenSSL ctypes cannot reach (cryptography's) is the same cipher."""
    lib = _fernet._libcrypto()
    if lib is None:
        pytest.skip("this Python's OpenSSL cannot be called through ctypes")
    key, iv, data = bytes(range(16)), bytes(range(16, 32)), bytes(range(length))
    sealed = _fernet._evp(lib, True, key, iv, data)
    assert sealed == _fernet._cryptography(True, key, iv, data)
    assert _fernet._evp(lib, False, key, iv, sealed) == _fernet._cryptography(False, key, iv, sealed) == data


def test_wrong_padding_under_a_valid_signature_is_refused_by_either():
    lib = _fernet._libcrypto()
    key, iv = bytes(range(16)), bytes(16)
    unpadded = _fernet._cryptography(True, key, iv, b"x" * 16)[:16]  # the padding block dropped
    with pytest.raises(_fernet.InvalidToken):
        _fernet._cryptography(False, key, iv, unpadded)
    if lib is not None:
        with pytest.raises(_fernet.InvalidToken):
            _fernet._evp(lib, False, key, iv, unpadded)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the OpenSSL of Python is found through /proc")
def test_sealing_and_opening_do_not_load_cryptography():
    """cryptography's extension costs a process ~8 MB; every process opens the registry's secrets."""
    code = ("import sys; from workers.secrets import Keyring, generate_key; k = Keyring([generate_key()]); "
            "assert k.unseal(k.seal('s')) == 's'; print(sorted(m for m in sys.modules if m.startswith('cryptography.')))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
