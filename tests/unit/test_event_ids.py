"""Event ids are one shell word: a person pastes them unquoted into `flask events show ID`."""
from __future__ import annotations

import shlex
from urllib.parse import unquote

import pytest

from engine.events import id_part


@pytest.mark.parametrize("text", [
    "0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b",
    "Name='cf_2283e9e4_Budget',ObjectId=0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b",
    "Name='Kosten Stelle',ObjectId=1",
    "100% $(rm -rf ~) `x` \"q\" ; & | < > * ? [ ] { } # ! \\ \t\n",
    "Größe ✓",
])
def test_an_id_part_is_one_shell_word_and_reads_back_as_written(text):
    part = id_part(text)
    assert shlex.quote(part) == part and shlex.split(part) == [part]
    assert unquote(part) == text  # one-to-one: two keys never share an id


def test_a_guid_is_left_as_it_is():
    assert id_part("0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b") == "0b4f2a9e-8c1d-4e6f-9a2b-3c4d5e6f7a8b"
