"""Fernet tokens, the format cryptography's `Fernet` writes, made with the OpenSSL this Python already loaded.

A token is base64url(0x80 ‖ seconds since 1970 (8 bytes) ‖ IV (16) ‖ AES-128-CBC of the PKCS#7-padded
text ‖ HMAC-SHA256 of all that (32)); of the 32-byte key, the first half signs and the second
encrypts (https://github.com/fernet/spec). Opening checks the signature before anything else.

Why not cryptography's `Fernet`: its Rust extension costs each process ~8 MB, and every web,
worker and poller process opens the registry's secrets as it starts (issue 22). The HMAC is
Python's `hmac`; AES-CBC (with its PKCS#7 padding) is OpenSSL's EVP interface, called through
ctypes in the libcrypto that Python's `_hashlib` links, so no library is loaded that was not
already there. Where there is none to call (no /proc, OpenSSL linked statically), AES-CBC comes
from cryptography instead. Tests check tokens against cryptography's `Fernet` both ways.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import functools
import hashlib
import hmac
import os
import time
from pathlib import Path

VERSION = 0x80
KEY_BYTES = 32  # 16 bytes of HMAC key, then 16 of AES key
_IV_BYTES = 16
_MAC_BYTES = 32
_HEADER_BYTES = 1 + 8 + _IV_BYTES  # version, time, IV


class InvalidToken(ValueError):
    """Not a Fernet token, or one that does not verify under this key."""


def generate_key() -> str:
    """A new random key: url-safe base64 of 32 bytes (what cryptography's Fernet.generate_key makes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


class Fernet:
    """Seals and opens tokens under one key; raises ValueError for a key that is not 32 url-safe base64 bytes."""

    def __init__(self, key: str | bytes):
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != KEY_BYTES:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        self._signing_key, self._encryption_key = raw[:16], raw[16:]

    def encrypt(self, data: bytes) -> bytes:
        """A token of `data`, stamped with the current time."""
        iv = os.urandom(_IV_BYTES)
        signed = (bytes([VERSION]) + int(time.time()).to_bytes(8, "big") + iv
                  + _aes_cbc(True, self._encryption_key, iv, data))
        return base64.urlsafe_b64encode(signed + self._mac(signed))

    def decrypt(self, token: str | bytes) -> bytes:
        """The data of a token sealed under this key (however old); raises InvalidToken."""
        try:
            data = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            raise InvalidToken("not base64") from None
        if len(data) < _HEADER_BYTES + _MAC_BYTES or data[0] != VERSION:
            raise InvalidToken("not a Fernet token")
        signed, mac = data[:-_MAC_BYTES], data[-_MAC_BYTES:]
        if not hmac.compare_digest(self._mac(signed), mac):
            raise InvalidToken("the signature does not verify")
        iv = signed[1 + 8:_HEADER_BYTES]
        return _aes_cbc(False, self._encryption_key, iv, signed[_HEADER_BYTES:])

    def _mac(self, signed: bytes) -> bytes:
        return hmac.new(self._signing_key, signed, hashlib.sha256).digest()


def _aes_cbc(encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128-CBC with PKCS#7 padding; InvalidToken when decrypted padding is wrong."""
    lib = _libcrypto()
    return _evp(lib, encrypt, key, iv, data) if lib is not None else _cryptography(encrypt, key, iv, data)


def _evp(lib, encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
    ctx = lib.EVP_CIPHER_CTX_new()
    if not ctx:
        raise MemoryError("EVP_CIPHER_CTX_new failed")
    try:
        out = ctypes.create_string_buffer(len(data) + 16)  # padding adds at most one block
        written, last = ctypes.c_int(0), ctypes.c_int(0)
        ok = (lib.EVP_CipherInit_ex(ctx, lib.EVP_aes_128_cbc(), None, key, iv, int(encrypt)) == 1
              and lib.EVP_CipherUpdate(ctx, out, ctypes.byref(written), data, len(data)) == 1
              and lib.EVP_CipherFinal_ex(ctx, ctypes.byref(out, written.value), ctypes.byref(last)) == 1)
        if not ok:
            lib.ERR_clear_error()  # leave OpenSSL's per-thread error queue empty for Python's ssl
            if encrypt:
                raise RuntimeError("OpenSSL could not encrypt")
            raise InvalidToken("the padding is wrong")
        return out.raw[:written.value + last.value]
    finally:
        lib.EVP_CIPHER_CTX_free(ctx)


def _cryptography(encrypt: bool, key: bytes, iv: bytes, data: bytes) -> bytes:
    """The same with cryptography, for a Python whose OpenSSL cannot be called through ctypes."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if encrypt:
        padder = padding.PKCS7(128).padder()
        encryptor = cipher.encryptor()
        return encryptor.update(padder.update(data) + padder.finalize()) + encryptor.finalize()
    try:
        decryptor = cipher.decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(decryptor.update(data) + decryptor.finalize()) + unpadder.finalize()
    except ValueError:
        raise InvalidToken("the padding is wrong") from None


@functools.cache
def _libcrypto():
    """The libcrypto Python's hashlib uses, with the EVP functions declared; None where there is none to call."""
    try:
        import _hashlib  # noqa: F401  (maps the libcrypto it links, if it links one)

        maps = Path("/proc/self/maps").read_text()
    except (ImportError, OSError):
        return None
    paths = {field for line in maps.splitlines() for field in line.split()[5:]
             if Path(field).name.startswith("libcrypto.so")}
    if len(paths) != 1:  # none (linked statically), or two OpenSSLs: not a guess to make
        return None
    try:
        lib = ctypes.CDLL(paths.pop())
        _declare(lib)
    except (OSError, AttributeError):
        return None
    return lib


def _declare(lib) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    for name, result, args in [
        ("EVP_CIPHER_CTX_new", p, []),
        ("EVP_CIPHER_CTX_free", None, [p]),
        ("EVP_aes_128_cbc", p, []),
        ("EVP_CipherInit_ex", i, [p, p, p, ctypes.c_char_p, ctypes.c_char_p, i]),
        ("EVP_CipherUpdate", i, [p, p, ctypes.POINTER(i), ctypes.c_char_p, i]),
        ("EVP_CipherFinal_ex", i, [p, p, ctypes.POINTER(i)]),
        ("ERR_clear_error", None, []),
    ]:
        function = getattr(lib, name)
        function.restype, function.argtypes = result, args
