"""The keyring of SECRETS_KEY: sealed secrets name their key, never show their text, and rotate."""
from __future__ import annotations

import pytest

from workers.secrets import Keyring, SecretsKeyError, SecretUnreadable, generate_key

OLD, NEW = generate_key(), generate_key()


def test_a_sealed_secret_names_its_key_and_opens_with_it():
    keyring = Keyring([OLD])
    sealed = keyring.seal("ilx_token_1")
    assert sealed.startswith(f"fernet:{keyring.newest}:") and "ilx_token_1" not in sealed
    assert keyring.unseal(sealed) == "ilx_token_1"


def test_a_keyring_without_the_key_says_which_key_and_never_the_secret():
    sealed = Keyring([OLD]).seal("ilx_token_1")
    with pytest.raises(SecretUnreadable) as refused:
        Keyring([NEW]).unseal(sealed)
    assert Keyring([OLD]).newest in str(refused.value) and "ilx_token_1" not in str(refused.value)


def test_rotation_reseals_under_the_newest_key_which_alone_then_opens_it():
    sealed = Keyring([OLD]).seal("s")
    both = Keyring(f"{NEW},{OLD}".split(","))
    rotated = both.rotated(sealed)
    assert both.is_current(rotated) and both.rotated(rotated) == rotated
    assert Keyring([NEW]).unseal(rotated) == "s"


@pytest.mark.parametrize("setting, message", [("", "SECRETS_KEY is empty"), ("not-a-key", "key 1 of 1 is not a Fernet key")])
def test_a_bad_secrets_key_is_refused_without_printing_it(setting, message):
    with pytest.raises(SecretsKeyError, match=message) as refused:
        Keyring.from_config({"SECRETS_KEY": setting})
    assert "not-a-key" not in str(refused.value)


@pytest.mark.parametrize("setting", ["", " ", " , "])
def test_an_empty_secrets_key_lets_a_process_start_and_a_malformed_one_stops_it(setting):
    from workers.settings import check_secrets_key

    check_secrets_key({"SECRETS_KEY": setting})  # no registry: the declared workspaces alone, said once
    with pytest.raises(SystemExit, match=r"^Error: SECRETS_KEY: key 2 of 2 is not a Fernet key") as stopped:
        check_secrets_key({"SECRETS_KEY": f"{generate_key()},typo{setting}"})
    assert "typo" not in str(stopped.value)
