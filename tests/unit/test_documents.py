"""Hostile rule files (issue 19): nesting past the limit, tags beyond YAML's standard ones, lone
surrogates and bytes that are not UTF-8 are refused at their line, never a RecursionError or a
TypeError, and never by running anything."""
import pytest
from flask import Flask

from engine import load_texts
from engine.bodies import MAX_DEPTH
from engine.documents import parse_documents
from engine.errors import RuleError
from web.rules_cli import rules_cli

RULE = "id: r\nwhen: {manual: true}\nthen:\n  - notify: x\n    body: y\n"


def error_of(text: str | bytes) -> str:
    [error] = load_texts([("r.yaml", text)]).errors
    return error.format()


def block_mapping(depth: int) -> str:
    """A mapping nested `depth` levels deep, one key per line, one more space of indent per level."""
    return "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "leaf\n"


@pytest.mark.parametrize("text, where", [
    ("id: x\nv: " + "[" * 1000 + "]" * 1000 + "\n", "r.yaml:2:67"),
    ("id: x\nv: " + "[" * 30_000 + "]" * 30_000 + "\n", "r.yaml:2:67"),
    ("id: x\nv: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", "r.yaml:2:"),
    (block_mapping(900), "r.yaml:65:65"),
    ("- " * 1000 + "x\n", "r.yaml:1:129"),
], ids=["flow-1000", "flow-30000", "flow-map-1000", "block-900", "compact-seq-1000"])
def test_nesting_past_the_limit_is_refused_where_it_passes(text, where):
    error = error_of(text)

    assert error.startswith(f"{where}") and f"the YAML nests deeper than {MAX_DEPTH} levels" in error, error


def test_nesting_up_to_the_limit_loads():
    [doc] = parse_documents("v: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n", "r.yaml")
    value, depth = doc.data, 0
    while isinstance(value, (dict, list)):
        value, depth = (value["v"] if isinstance(value, dict) else (value[0] if value else None)), depth + 1
    assert depth == MAX_DEPTH


def test_aliases_cannot_nest_past_the_limit_either():
    # Each anchor holds 40 levels and the alias of the one before it: 8 of them expand to 320 levels.
    lines = ["a0: &a0 x"]
    for n in range(1, 9):
        lines.append(f"a{n}: &a{n} " + "[" * 40 + f"*a{n - 1}" + "]" * 40)
    text = "\n".join(lines) + "\n"

    with pytest.raises(RuleError, match=f"nests deeper than {MAX_DEPTH} levels once its YAML aliases are expanded"):
        parse_documents(text, "r.yaml")


@pytest.mark.parametrize("tagged, shown, col", [
    ("!!python/object/apply:os.system ['touch {ran}']", "!!python/object/apply:os.system", 4),
    ("!!python/object/new:os.system ['touch {ran}']", "!!python/object/new:os.system", 4),
    ("!!python/name:os.system", "!!python/name:os.system", 4),
    ("{{cmd: !!python/object/apply:os.system ['touch {ran}']}}", "!!python/object/apply:os.system", 10),
    ("!custom 3", "!custom", 4),
    ("!!binary aGk=", "!!binary", 4),
    ("!!set {{a: null}}", "!!set", 4),
    ("! plain", "!", 4),
], ids=["apply", "new", "name", "nested", "local", "binary", "set", "non-specific"])
def test_a_tag_beyond_the_standard_ones_is_refused_at_its_line_and_nothing_runs(tagged, shown, col, tmp_path):
    ran = tmp_path / "ran"
    text = "id: x\nv: " + tagged.format(ran=ran) + "\n"

    error = error_of(text)

    assert error.startswith(f"r.yaml:2:{col}: the tag {shown} is not one a rule file may use"), error
    assert "!!str, !!int, !!float, !!bool, !!null, !!map, !!seq and !!timestamp" in error
    assert not ran.exists()


def test_a_tag_directive_cannot_smuggle_a_python_tag():
    text = "%TAG !py! tag:yaml.org,2002:python/\n---\nid: x\nv: !py!name:os.system\n"

    assert error_of(text).startswith("r.yaml:4:4: the tag !!python/name:os.system is not one a rule file may use")


def test_the_standard_tags_load_as_their_values():
    text = ('a: !!str 3\nb: !!int "4"\nc: !!float "1.5"\nd: !!bool "true"\ne: !!null ""\n'
            "f: !!map {x: 1}\ng: !!seq [1]\nh: !!timestamp 2026-01-02\n")

    [doc] = parse_documents(text, "r.yaml")

    assert doc.data == {"a": "3", "b": 4, "c": 1.5, "d": True, "e": None, "f": {"x": 1}, "g": [1],
                        "h": "2026-01-02"}


def test_an_escaped_lone_surrogate_is_refused_at_its_value():
    error = error_of(RULE.replace("body: y", 'body: "hi \\ud800 there"'))

    assert error.startswith("r.yaml:5:11: the escape \\ud800 is half of a surrogate pair"), error


def test_an_escaped_surrogate_pair_is_its_one_character():
    [doc] = parse_documents('v: "\\ud83d\\ude00"\n', "r.yaml")

    assert doc.data == {"v": "\U0001F600"}


def test_a_raw_lone_surrogate_in_the_text_is_refused():
    assert error_of("id: x\nv: a\ud800\n").startswith("r.yaml:2:5: the character U+D800 cannot appear in YAML text")


def test_bytes_that_are_not_utf8_are_refused_at_their_line():
    error = error_of(RULE.encode().replace(b"body: y", b"body: caf\xe9"))

    assert error == "r.yaml:5:14: byte 0xe9 is not UTF-8 text (save the file as UTF-8)"


def test_a_byte_order_mark_is_not_part_of_the_text():
    assert [r for r in load_texts([("r.yaml", b"\xef\xbb\xbf" + RULE.encode())]).rules] == ["r"]


@pytest.fixture
def runner():
    app = Flask("documents-test")
    app.cli.add_command(rules_cli)
    return app.test_cli_runner()


def test_check_prints_hostile_files_as_errors_not_tracebacks(runner, tmp_path):
    (tmp_path / "deep.yaml").write_text("id: deep\nv: " + "[" * 1000 + "]" * 1000 + "\n")
    (tmp_path / "tagged.yaml").write_text("id: tagged\nv: !!python/object/apply:os.system ['true']\n")
    (tmp_path / "latin1.yaml").write_bytes(b"id: latin1\ndescription: caf\xe9\n")
    (tmp_path / "good.yaml").write_text(RULE)

    result = runner.invoke(args=["rules", "check", str(tmp_path)])

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"deep.yaml:2:67: the YAML nests deeper than {MAX_DEPTH} levels" in result.output
    assert "tagged.yaml:2:4: the tag !!python/object/apply:os.system is not one a rule file may use" in result.output
    assert "latin1.yaml:2:17: byte 0xe9 is not UTF-8 text" in result.output
    assert "Error: 3 error(s); 1 rule(s) loaded" in result.output
