"""Rule bundles per workspace in a real Redis: upload, list, roll back, refuse broken or unsafe bundles."""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis as redis_lib

from engine import load_rules
from engine.bodies import MAX_DEPTH
from workers.bundles import (MAX_BYTES, MAX_FILES, MAX_INFLATED, MAX_VERSIONS, BundleError, UnknownVersion, activate,
                             active, active_number, parse_bundle, upload, versions)
from workers.workspaces import Workspace

RULES = Path(__file__).parents[2] / "rules"
LOG_TIME = (RULES / "log-time-when-task-done.yaml").read_text()
ALERT = (RULES / "unassigned-task-alert.yaml").read_text()
ACME = "ws:acme:"
NOW = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
# The log-time rule with its trigger's `changes` misspelt, on line 7 of the file.
BROKEN = LOG_TIME.replace("id: log-time-when-task-done", "id: broken-log-time").replace("    changes:", "    chnages:")


@pytest.fixture
def connection(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    yield client
    client.close()


def renamed(text: str, rule_id: str) -> str:
    """A copy of an example rule under another id."""
    first_id = next(line for line in text.splitlines() if line.startswith("id: "))
    return text.replace(first_id, f"id: {rule_id}")


def test_first_upload_is_version_1_and_active(connection):
    files = {"tasks.yaml": LOG_TIME, "alerts.yml": ALERT}

    version = upload(connection, ACME, files, by="ann@example.com", now=NOW)

    assert version.number == 1 and version.active
    assert version.rule_ids == ["log-time-when-task-done", "unassigned-task-alert"]
    assert (version.by, version.uploaded_at, version.file_count) == ("ann@example.com", NOW.isoformat(), 2)
    assert active(connection, ACME) == (1, files)
    assert active_number(connection, ACME) == 1
    assert [v.to_dict() for v in versions(connection, ACME)] == [version.to_dict()]


def test_nothing_uploaded_means_no_active_version(connection):
    assert active(connection, ACME) is None
    assert active_number(connection, ACME) is None
    assert versions(connection, ACME) == []


def test_second_upload_activates_2_and_rollback_activates_1(connection):
    first = {"tasks.yaml": LOG_TIME}
    second = {"tasks.yaml": renamed(LOG_TIME, "log-time-v2")}
    upload(connection, ACME, first, now=NOW)
    assert upload(connection, ACME, second, now=NOW).number == 2
    assert active(connection, ACME) == (2, second)

    rolled_back = activate(connection, ACME, 1)

    assert rolled_back.number == 1 and rolled_back.active and rolled_back.rule_ids == ["log-time-when-task-done"]
    assert active(connection, ACME) == (1, first)
    assert [(v.number, v.active) for v in versions(connection, ACME)] == [(2, False), (1, True)]


def test_the_active_digest_names_the_active_versions_content_in_one_round_trip(connection):
    from workers.bundles import active_digest, active_version

    assert active_digest(connection, ACME) is None and active_version(connection, ACME) is None
    first = upload(connection, ACME, {"tasks.yaml": LOG_TIME}, by='ann "sha256": "00"', now=NOW)
    second = upload(connection, ACME, {"tasks.yaml": renamed(LOG_TIME, "log-time-v2")}, now=NOW)
    assert active_digest(connection, ACME) == (2, second.sha256)
    assert active_version(connection, ACME) == (2, second.sha256, {"tasks.yaml": renamed(LOG_TIME, "log-time-v2")})
    activate(connection, ACME, 1)
    assert active_digest(connection, ACME) == (1, first.sha256)  # not fooled by an uploader's name
    assert active_version(connection, ACME)[:2] == (1, first.sha256)


def test_a_broken_bundle_stores_nothing_and_names_file_and_line(connection):
    good = {"tasks.yaml": LOG_TIME}
    upload(connection, ACME, good, now=NOW)

    errors = upload(connection, ACME, {"tasks.yaml": LOG_TIME, "broken.yaml": BROKEN}, now=NOW)

    assert [e.format() for e in errors] == [
        "broken.yaml:7:5: when[0].chnages: unknown key 'chnages' (did you mean 'changes'?)"]
    assert active(connection, ACME) == (1, good)
    assert [v.number for v in versions(connection, ACME)] == [1]
    assert upload(connection, ACME, good, now=NOW).number == 2  # no number was spent on the refusal


def test_activating_a_version_never_stored_is_refused(connection):
    upload(connection, ACME, {"tasks.yaml": LOG_TIME}, now=NOW)

    with pytest.raises(UnknownVersion, match="no rule bundle version 7"):
        activate(connection, ACME, 7)
    assert active_number(connection, ACME) == 1


def test_workspaces_never_see_each_others_versions(connection):
    upload(connection, ACME, {"tasks.yaml": LOG_TIME}, now=NOW)
    upload(connection, ACME, {"tasks.yaml": renamed(LOG_TIME, "acme-2")}, now=NOW)
    globex = {"alerts.yaml": ALERT}

    assert upload(connection, "ws:globex:", globex, now=NOW).number == 1

    assert active(connection, "ws:globex:") == (1, globex)
    assert [v.number for v in versions(connection, "ws:globex:")] == [1]
    assert active_number(connection, ACME) == 2
    with pytest.raises(UnknownVersion):
        activate(connection, "ws:globex:", 2)
    assert all(key.startswith((b"ws:acme:", b"ws:globex:")) for key in connection.keys("*"))


def test_only_the_newest_versions_are_kept(connection):
    for n in range(MAX_VERSIONS + 2):
        upload(connection, ACME, {"tasks.yaml": renamed(LOG_TIME, f"rule-{n}")}, now=NOW)

    numbers = [v.number for v in versions(connection, ACME)]

    assert numbers == list(range(MAX_VERSIONS + 2, 2, -1))
    with pytest.raises(UnknownVersion):
        activate(connection, ACME, 2)
    assert connection.get(f"{ACME}rules:files:2") is None


def test_the_digest_covers_content_not_file_order(connection):
    one = upload(connection, ACME, {"a.yaml": LOG_TIME, "b.yaml": ALERT}, now=NOW)
    same = upload(connection, ACME, {"b.yaml": ALERT, "a.yaml": LOG_TIME}, now=NOW)
    other = upload(connection, ACME, {"a.yaml": ALERT, "b.yaml": LOG_TIME}, now=NOW)

    assert one.sha256 == same.sha256 != other.sha256


def tar_gz(entries: dict[str, bytes], *, extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A gzip'd tar as `tar czf - -C folder .` writes it: names start with './'."""
    buffer = io.BytesIO()
    # mtime=0: the same bytes on every call, so pytest-xdist's workers collect the same test ids.
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w") as archive:
        for info in extra:
            archive.addfile(info)
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_parse_json_bundle():
    body = json.dumps({"files": {"tasks.yaml": LOG_TIME, "alerts.yml": ALERT}}).encode()

    assert parse_bundle(body, "application/json; charset=utf-8") == {"tasks.yaml": LOG_TIME, "alerts.yml": ALERT}


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml"])
def test_parse_one_yaml_document(content_type):
    assert parse_bundle(LOG_TIME.encode(), content_type) == {"rules.yaml": LOG_TIME}


@pytest.mark.parametrize("content_type", ["application/gzip", "application/x-gzip", "application/x-tar"])
def test_parse_a_rules_folder_as_tar_gz(content_type):
    body = tar_gz({"./tasks.yaml": LOG_TIME.encode(), "./alerts.yml": ALERT.encode(), "./README.md": b"# notes",
                   "./tests/task-events.yaml": b"cases: []", "./._tasks.yaml": b"\x00\x05\x16\x07"},
                  extra=[folder("."), folder("./tests")])

    assert parse_bundle(body, content_type) == {"tasks.yaml": LOG_TIME, "alerts.yml": ALERT}


def test_the_example_rules_folder_uploads_as_tar_gz(connection):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(RULES, arcname=".")  # what `tar czf - -C rules .` sends

    version = upload(connection, ACME, parse_bundle(buffer.getvalue(), "application/gzip"), now=NOW)

    assert version.rule_ids == sorted(load_rules(RULES).rules)


@pytest.mark.parametrize("body, content_type, message", [
    (LOG_TIME.encode(), "text/plain", "content type 'text/plain' is not a rule bundle"),
    (LOG_TIME.encode(), "", "content type '(none)'"),
    (b"{files:", "application/json", "not valid JSON"),
    (b'["tasks.yaml"]', "application/json", 'a JSON bundle is {"files"'),
    (b'{"files": {"tasks.yaml": 3}}', "application/json", "files['tasks.yaml'] is not a string"),
    (b'{"files": {}}', "application/json", "holds no .yaml or .yml rule files"),
    (b'{"files": {"../x.yaml": "id: a"}}', "application/json", "'../x.yaml' is not a plain file name"),
    (b'{"files": {"sub/x.yaml": "id: a"}}', "application/json", "'sub/x.yaml' is not a plain file name"),
    (b'{"files": {"notes.txt": "id: a"}}', "application/json", "'notes.txt' is not a plain file name"),
    (b"\xff\xfe", "application/yaml", "not UTF-8"),
    (b"id: a", "application/gzip", "not a gzip'd tar archive"),
    (gzip.compress(b"id: a", mtime=0), "application/gzip", "not a gzip'd tar archive"),
    (tar_gz({"../x.yaml": b"id: a"}), "application/gzip", "'../x.yaml' points outside the rules folder"),
    (tar_gz({"/etc/x.yaml": b"id: a"}), "application/gzip", "'/etc/x.yaml' points outside"),
    (tar_gz({"./README.md": b"# notes"}), "application/gzip", "holds no .yaml or .yml rule files"),
])
def test_parse_refuses(body, content_type, message):
    with pytest.raises(BundleError, match=re.escape(message)):
        parse_bundle(body, content_type)


def test_parse_refuses_oversize_bundles():
    too_many = {"files": {f"r{n}.yaml": "" for n in range(MAX_FILES + 1)}}
    too_big = {"files": {"big.yaml": "#" * (MAX_BYTES + 1)}}
    # Ignored entries count too: a gzip bomb in a README is refused before it is read.
    bomb = tar_gz({"./tasks.yaml": LOG_TIME.encode(), "./README.md": b"\0" * (MAX_BYTES + 1)})

    with pytest.raises(BundleError, match=f"holds {MAX_FILES + 1} files"):
        parse_bundle(json.dumps(too_many).encode(), "application/json")
    with pytest.raises(BundleError, match=f"holds {MAX_BYTES + 1} bytes"):
        parse_bundle(json.dumps(too_big).encode(), "application/json")
    with pytest.raises(BundleError, match=f"bigger than {MAX_BYTES} bytes"):
        parse_bundle(bomb, "application/gzip")


def test_concurrent_uploads_get_distinct_numbers_and_the_last_is_active(redis_url):
    def upload_one(n: int) -> int:
        client = redis_lib.Redis.from_url(redis_url)
        try:
            return upload(client, ACME, {"tasks.yaml": renamed(LOG_TIME, f"rule-{n}")}, now=NOW).number
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        numbers = sorted(pool.map(upload_one, range(16)))

    connection = redis_lib.Redis.from_url(redis_url)
    assert numbers == list(range(1, 17))
    assert active_number(connection, ACME) == 16
    assert [v.number for v in versions(connection, ACME)] == list(range(16, 0, -1))
    connection.close()


# --- hostile bundles through HTTP (issue 19): 422 naming what was wrong, never a 5xx --------------

ADMIN = "globex-admin-token"
SECRETS_KEY = "3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="  # a Fernet key, for the workspace registry's secrets


@pytest.fixture
def api(redis_url):
    """The app serving one workspace whose rules are uploaded bundles (no InLoox call is made)."""
    from app import create_app

    globex = Workspace("globex", "http://127.0.0.1:9", "unused", admin_token=ADMIN)
    return create_app({"TESTING": True, "REDIS_URL": redis_url, "WORKSPACES": {"globex": globex},
                       "SECRETS_KEY": SECRETS_KEY}).test_client()


def put_bundle(api, body: bytes, content_type: str):
    return api.put("/workspaces/globex/rules", data=body,
                   headers={"Content-Type": content_type, "Authorization": f"Bearer {ADMIN}"})


def nested_json(depth: int) -> bytes:
    return b'{"files": {"a.yaml": ' + b"[" * depth + b"]" * depth + b"}}"


def deep_yaml(depth: int) -> bytes:
    return b"id: deep\nv: " + b"[" * depth + b"]" * depth + b"\n"


def block_mapping(depth: int) -> bytes:
    return ("".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "leaf\n").encode()


HOSTILE = [
    ("json-1000", nested_json(1000), "application/json", f"the body nests deeper than {MAX_DEPTH} levels"),
    ("json-5000", b"[" * 5000 + b"]" * 5000, "application/json", f"the body nests deeper than {MAX_DEPTH} levels"),
    ("json-30000", b"[" * 30_000 + b"]" * 30_000, "application/json", f"the body nests deeper than {MAX_DEPTH} levels"),
    ("yaml-flow-1000", deep_yaml(1000), "application/yaml",
     f"rules.yaml:2:67: the YAML nests deeper than {MAX_DEPTH} levels"),
    ("yaml-block-900", block_mapping(900), "application/yaml",
     f"rules.yaml:65:65: the YAML nests deeper than {MAX_DEPTH} levels"),
    ("json-of-deep-yaml", json.dumps({"files": {"a.yaml": deep_yaml(1000).decode()}}).encode(), "application/json",
     f"a.yaml:2:67: the YAML nests deeper than {MAX_DEPTH} levels"),
    ("tar-of-deep-yaml", tar_gz({"./a.yaml": deep_yaml(5000)}), "application/gzip",
     f"a.yaml:2:67: the YAML nests deeper than {MAX_DEPTH} levels"),
    ("python-apply", b"id: x\nv: !!python/object/apply:os.system ['true']\n", "application/yaml",
     "rules.yaml:2:4: the tag !!python/object/apply:os.system is not one a rule file may use"),
    ("python-name", b"id: x\nv: !!python/name:os.system\n", "application/yaml",
     "rules.yaml:2:4: the tag !!python/name:os.system is not one a rule file may use"),
    ("custom-tag", b"id: x\nv: !custom 3\n", "application/yaml",
     "rules.yaml:2:4: the tag !custom is not one a rule file may use"),
    ("bool-tag-misfit", b"id: x\nenabled: !!bool maybe\n", "application/yaml",
     "rules.yaml: a value does not fit its YAML tag"),
    ("int-tag-misfit", b"id: x\nv: !!int 0x\n", "application/yaml", "rules.yaml: a value does not fit its YAML tag"),
    ("float-tag-misfit", b"id: x\nv: !!float ''\n", "application/yaml",
     "rules.yaml: a value does not fit its YAML tag"),
    ("json-lone-surrogate", b'{"files": {"a.yaml": "id: \\ud800"}}', "application/json",
     "the body holds a lone surrogate \\ud800"),
    ("yaml-escaped-surrogate", b'id: "\\ud800"\n', "application/yaml",
     "rules.yaml:1:5: the escape \\ud800 is half of a surrogate pair"),
    ("yaml-not-utf8", b"id: caf\xe9\n", "application/yaml", "rules.yaml:1:8: byte 0xe9 is not UTF-8 text"),
    ("tar-not-utf8", tar_gz({"./tasks.yaml": b"id: x\ndescription: caf\xe9\n"}), "application/gzip",
     "tasks.yaml:2:17: byte 0xe9 is not UTF-8 text"),
]


@pytest.mark.parametrize("body, content_type, message", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_hostile_bundle_is_refused_with_422_naming_what_was_wrong(api, body, content_type, message):
    refused = put_bundle(api, body, content_type)

    assert refused.status_code == 422, refused.get_data(as_text=True)[:500]
    answer = refused.get_json()
    assert answer["error"] == "the rule bundle is not valid; the active version is unchanged"
    assert any(error.startswith(message) for error in answer["errors"]), answer["errors"]
    listing = api.get("/workspaces/globex/rules", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert listing["versions"] == []  # nothing was stored


def test_a_hostile_upload_leaves_the_active_version_running(api):
    good = json.dumps({"files": {"tasks.yaml": LOG_TIME}}).encode()
    assert put_bundle(api, good, "application/json").status_code == 201

    assert put_bundle(api, deep_yaml(1000), "application/yaml").status_code == 422

    listing = api.get("/workspaces/globex/rules", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert listing["active"] == "v1" and [v["number"] for v in listing["versions"]] == [1]


@pytest.mark.parametrize("body", [b"", b"\n  \n", b"\xef\xbb\xbf"], ids=["empty", "blank", "bom-only"])
def test_an_empty_yaml_body_is_refused_as_an_empty_json_bundle_is(api, body):
    good = json.dumps({"files": {"tasks.yaml": LOG_TIME}}).encode()
    assert put_bundle(api, good, "application/json").status_code == 201

    refused = put_bundle(api, body, "application/yaml")

    assert refused.status_code == 400, refused.get_data(as_text=True)[:500]
    assert "the bundle holds no rule file: the application/yaml body is empty" in refused.get_data(as_text=True)
    listing = api.get("/workspaces/globex/rules", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert listing["active"] == "v1" and [v["number"] for v in listing["versions"]] == [1]


NO_RULE = [
    ("yaml-comments", b"# the rules moved to acme.yaml\n\n  # (kept for the history)\n", "application/yaml"),
    ("yaml-empty-documents", b"---\n# nothing here yet\n---\nnull\n", "application/yaml"),
    ("json-comments", json.dumps({"files": {"a.yaml": "# todo\n", "b.yml": "---\n"}}).encode(), "application/json"),
    ("tar-comments", tar_gz({"./a.yaml": b"# todo\n"}), "application/gzip"),
]


@pytest.mark.parametrize("body, content_type", [c[1:] for c in NO_RULE], ids=[c[0] for c in NO_RULE])
def test_a_bundle_of_comments_alone_is_refused_as_an_empty_one_is(api, body, content_type):
    # Stored, a bundle that holds no rule switches every rule of the workspace off, as an empty body would.
    good = json.dumps({"files": {"tasks.yaml": LOG_TIME}}).encode()
    assert put_bundle(api, good, "application/json").status_code == 201

    refused = put_bundle(api, body, content_type)

    assert refused.status_code == 400, refused.get_data(as_text=True)[:500]
    assert refused.get_json()["error"]["message"] == (
        "the bundle holds no rule: its files hold only comments, blank lines or empty YAML documents")
    listing = api.get("/workspaces/globex/rules", headers={"Authorization": f"Bearer {ADMIN}"}).get_json()
    assert listing["active"] == "v1" and [v["number"] for v in listing["versions"]] == [1]

LONG = "r" * 100_000  # a file name of 100 KB: the answer names it by its first 80 characters
LONG_NAMES = [
    ("json-not-plain", json.dumps({"files": {LONG + ".txt": "id: a"}}).encode(), "application/json", 400),
    ("json-not-text", json.dumps({"files": {LONG + ".yaml": 3}}).encode(), "application/json", 400),
    ("tar-outside", tar_gz({"../" + LONG + ".yaml": b"id: a"}), "application/gzip", 400),
    ("tar-not-plain", tar_gz({"./" + LONG + ".yaml": b"id: a"}), "application/gzip", 400),
    ("tar-long-not-utf8", tar_gz({"./" + LONG + ".yaml": b"id: caf\xe9\n"}), "application/gzip", 400),
]


@pytest.mark.parametrize("body, content_type, status", [c[1:] for c in LONG_NAMES], ids=[c[0] for c in LONG_NAMES])
def test_a_refused_file_name_is_echoed_cut_short(api, body, content_type, status):
    refused = put_bundle(api, body, content_type)

    assert refused.status_code == status, refused.get_data(as_text=True)[:500]
    assert "r" * 77 + "…'" in json.dumps(refused.get_json(), ensure_ascii=False)  # 80 with `../`
    assert len(refused.get_data()) < 1000


def test_an_archive_whose_headers_inflate_past_the_limit_is_refused_before_they_are_read(api):
    # tarfile reads a pax header whole before its member: 20 MiB of one from a 20 KiB upload (a 2 MB
    # upload held 1.9 GB of it, and took 3.9 GB and 17 s of the web process).
    content = LOG_TIME.encode()
    info = tarfile.TarInfo("./tasks.yaml")
    info.size, info.pax_headers = len(content), {"comment": "x" * 20 * 1024 * 1024}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(content))

    refused = put_bundle(api, buffer.getvalue(), "application/gzip")

    assert refused.status_code == 400, refused.get_data(as_text=True)[:500]
    assert f"the archive inflates to more than {MAX_INFLATED} bytes" in refused.get_data(as_text=True)
