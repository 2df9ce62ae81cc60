"""Versioned rule bundles per workspace in Redis: upload (validated), list, activate (roll back).

Under the workspace's key prefix:

    rules:seq           the last version number given out
    rules:versions      hash: version number → its Version as JSON (without `active`)
    rules:files:<n>     the version's files as JSON {file name: YAML text}
    rules:active        the number of the version workers run

Every write is one MULTI/EXEC, watched, so a reader never sees an active pointer to nothing or a
version without its files. A broken bundle is never stored: the active version keeps running.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import redis

from engine.bodies import BodyError, parse_json
from engine.documents import read_rule_text
from engine.errors import RuleError
from engine.rules import load_texts
from workers import activity, scripts, watched

MAX_FILES = 200
MAX_BYTES = 1024 * 1024  # uncompressed, all files together (a tar's ignored entries count too)
MAX_ARCHIVE_ENTRIES = 1000  # tar headers cost even when ignored: refuse archives of endless entries
# Bytes an archive may inflate to: the files, plus each entry's 512-byte header and padding (~1 MB for
# MAX_ARCHIVE_ENTRIES). Bounds what the member sizes cannot: tarfile reads a GNU long name or a pax
# header whole before it hands over the member it belongs to.
MAX_INFLATED = 2 * MAX_BYTES
# Rule text a thread serving other workspaces (a worker's busy floor, the schedules' loop, a web request) compiles
# itself, ~0.35 s of CPU; more (1 MB: 5-8 s) compiles elsewhere: a pool thread (workers/worker_context.py Compiling),
# the scheduler's compile thread, the web's parse child (web/bundle_check.py), which costs ~0.3 s to start.
COMPILE_HERE_BYTES = 64 * 1024
MAX_VERSIONS = 50  # per workspace; the oldest go when an upload makes more
_FILE_NAME = re.compile(r"\w[\w.\-]{0,200}\.ya?ml")  # no folders, no hidden files, no spaces
SHOWN_NAME_CHARS = 80  # of a refused file name in an error: a 100 KB name made a 100 KB answer
_YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml"}
_TAR_TYPES = {"application/gzip", "application/x-gzip", "application/x-tar"}
# KEYS: rules:active, rules:versions. The active number and the sha256 its version's metadata holds ("" without
# metadata), nil before the first upload: as one GET of the pointer was, one round trip; the metadata stays in Redis.
# The digest is found by pattern, not decoded: it comes before the rule ids, and no string value of the JSON can
# hold `"sha256": "` (its quotes would be escaped).
_ACTIVE_DIGEST = scripts.script("""
local number = redis.call('GET', KEYS[1])
if not number then return false end
local meta = redis.call('HGET', KEYS[2], number) or ''
return {number, string.match(meta, '"sha256": *"(%x+)"') or ''}
""")


class BundleError(ValueError):
    """A request body that is not a rule bundle we take; the message says why."""


class RefusedBundle(BundleError):
    """A bundle refused for what it holds, as a rule that does not validate is (422, not 400).

    The JSON is not valid or nests past engine.bodies.MAX_DEPTH or holds a lone surrogate, or a
    file is not UTF-8 (the message then starts with file:line:col).
    """


class UnknownVersion(KeyError):
    """The workspace has no stored version of that number (never uploaded, or trimmed)."""

    def __str__(self) -> str:  # KeyError would show the repr of its message
        return str(self.args[0])


@dataclass(frozen=True)
class Version:
    """A stored rule bundle: `sha256` covers its sorted file names and texts; `active` if workers run it."""

    number: int
    uploaded_at: str
    by: str
    sha256: str
    rule_ids: list[str]
    file_count: int
    active: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def parse_bundle(body: bytes, content_type: str) -> dict[str, str]:
    """File name → YAML text from a JSON `{"files": {…}}`, one YAML document, or a gzip'd tar of a rules folder."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        files = _json_files(body)
    elif kind in _YAML_TYPES:
        files = _yaml_file(body, kind)
    elif kind in _TAR_TYPES:
        files = _tar_files(body)
    else:
        raise BundleError(f"content type {kind or '(none)'!r} is not a rule bundle: send application/json, "
                          "application/yaml or a gzip'd tar (application/gzip)")
    return _checked(files)


@dataclass(frozen=True)
class Checked:
    """What validating a bundle found: the ids of its rules (sorted), and its errors (file:line:col each)."""

    rule_ids: list[str]
    errors: list[RuleError]


def check(files: dict[str, str]) -> Checked:
    """Validate the files (name → YAML text) in this process."""
    ruleset = load_texts(sorted(files.items()))
    return Checked(sorted(ruleset.rules), ruleset.errors)


def upload(connection: redis.Redis, prefix: str, files: dict[str, str], *, by: str = "",
           now: datetime | None = None, checked: Checked | None = None) -> Version | list[RuleError]:
    """Store a valid bundle as a new version and activate it; or store nothing and return its errors.

    `checked`: what validating `files` found elsewhere (the web validates in a child process:
    web/bundle_check.py); None validates them here. Raises BundleError, storing nothing, when the
    files hold no rule (only comments or empty documents).
    """
    checked = check(files) if checked is None else checked
    if checked.errors:
        return checked.errors
    if not checked.rule_ids:
        # As an empty body is (_yaml_file): stored, a version without rules switches every rule of the workspace off.
        raise BundleError("the bundle holds no rule: its files hold only comments, blank lines or empty YAML documents")
    content = json.dumps(files, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    moment = now or datetime.now(timezone.utc)

    def store(pipe) -> Version:
        number = int(pipe.get(f"{prefix}rules:seq") or 0) + 1
        version = Version(number, moment.isoformat(), by, hashlib.sha256(content.encode()).hexdigest(),
                          checked.rule_ids, len(files), active=True)
        stored = sorted(int(n) for n in pipe.hkeys(f"{prefix}rules:versions"))
        trimmed = stored[:max(0, len(stored) + 1 - MAX_VERSIONS)]  # all older than the new active one
        pipe.multi()
        pipe.set(f"{prefix}rules:seq", number)
        pipe.hset(f"{prefix}rules:versions", number, _meta(version))
        pipe.set(f"{prefix}rules:files:{number}", content)
        pipe.set(f"{prefix}rules:active", number)
        activity.note(pipe, prefix=prefix)  # the poller looks at what the new rules watch now, quiet or not
        if trimmed:
            pipe.hdel(f"{prefix}rules:versions", *trimmed)
            pipe.delete(*(f"{prefix}rules:files:{n}" for n in trimmed))
        return version

    return watched.transaction(connection, store, f"{prefix}rules:seq", f"{prefix}rules:versions")


def versions(connection: redis.Redis, prefix: str) -> list[Version]:
    """Every stored version, newest first; the active one has `active=True`."""
    with connection.pipeline() as pipe:  # MULTI/EXEC: the list and the pointer from one moment
        stored, current = pipe.hvals(f"{prefix}rules:versions").get(f"{prefix}rules:active").execute()
    found = [Version(**json.loads(meta)) for meta in stored]
    number = int(current) if current is not None else None
    return sorted((_marked(v, v.number == number) for v in found), key=lambda v: v.number, reverse=True)


def active(connection: redis.Redis, prefix: str) -> tuple[int, dict[str, str]] | None:
    """The active version's number and files, or None before the first upload."""
    found = active_version(connection, prefix)
    return None if found is None else (found[0], found[2])


def active_version(connection: redis.Redis, prefix: str) -> tuple[int, str, dict[str, str]] | None:
    """The active version's number, sha256 (as `active_digest` gives it) and files, or None before the first upload."""
    while True:
        number = connection.get(f"{prefix}rules:active")
        if number is None:
            return None
        with connection.pipeline() as pipe:  # MULTI/EXEC: the pointer, the files and the digest from one moment
            still, content, meta = pipe.get(f"{prefix}rules:active").get(f"{prefix}rules:files:{int(number)}") \
                .hget(f"{prefix}rules:versions", int(number)).execute()
        if still == number:  # else a switch came in between (and a trim may follow it): read again
            return int(number), json.loads(meta)["sha256"] if meta is not None else "", json.loads(content)


def active_digest(connection: redis.Redis, prefix: str) -> tuple[int, str] | None:
    """The active version's number and its content's sha256 ("" when its metadata is gone), None before the first
    upload; one round trip.

    The number alone does not name the rules that run: a workspace deleted and created again under the same name
    numbers its bundles from v1 again, other rules under the same number.
    """
    found = scripts.call(connection, _ACTIVE_DIGEST, keys=[f"{prefix}rules:active", f"{prefix}rules:versions"],
                         args=[])
    return None if found is None else (int(found[0]), found[1].decode())


def files(connection: redis.Redis, prefix: str, number: int) -> dict[str, str] | None:
    """The files of a stored version (active or not), or None when there is no such version."""
    content = connection.get(f"{prefix}rules:files:{int(number)}")
    return json.loads(content) if content is not None else None


def size(connection: redis.Redis, prefix: str, number: int) -> int:
    """Bytes of a stored version's files as stored (JSON), 0 when there is no such version: what compiling it costs."""
    return connection.strlen(f"{prefix}rules:files:{int(number)}")


def activate(connection: redis.Redis, prefix: str, number: int) -> Version:
    """Make a stored version the active one (rollback or forward); raises UnknownVersion.

    Not validated again: it was valid when stored, and the engine is the same code.
    """

    def switch(pipe) -> Version:
        meta = pipe.hget(f"{prefix}rules:versions", number)
        if meta is None:
            raise UnknownVersion(f"no rule bundle version {number} in this workspace")
        pipe.multi()
        pipe.set(f"{prefix}rules:active", number)
        activity.note(pipe, prefix=prefix)
        return _marked(Version(**json.loads(meta)), True)

    # Watching the versions hash: an upload trimming this version meanwhile makes us look again.
    return watched.transaction(connection, switch, f"{prefix}rules:versions")


def active_number(connection: redis.Redis, prefix: str) -> int | None:
    """The active version's number (one GET), for workers to notice a switch before each job."""
    number = connection.get(f"{prefix}rules:active")
    return int(number) if number is not None else None


def _meta(version: Version) -> str:
    meta = version.to_dict()
    del meta["active"]  # the pointer says which one is active; a copy here would go stale
    return json.dumps(meta)


def _marked(version: Version, is_active: bool) -> Version:
    return Version(**{**version.to_dict(), "active": is_active})


def _text(raw: bytes, file: str) -> str:
    try:
        return read_rule_text(raw, file)
    except RuleError as exc:
        raise RefusedBundle(str(exc)) from None


def _yaml_file(body: bytes, kind: str) -> dict[str, str]:
    text = _text(body, "rules.yaml")
    if not text.strip():
        # Stored, it would be a version without rules that switches every rule of the workspace off: a
        # body sent empty by mistake is refused as an empty JSON bundle or an archive without rule files is.
        raise BundleError(f"the bundle holds no rule file: the {kind} body is empty")
    return {"rules.yaml": text}


def _json_files(body: bytes) -> dict[str, str]:
    try:
        document = parse_json(body, "the body")
    except BodyError as exc:
        raise RefusedBundle(str(exc)) from None
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict):
        raise BundleError('a JSON bundle is {"files": {"name.yaml": "YAML text", …}}')
    for name, text in files.items():
        if not isinstance(text, str):
            raise BundleError(f"files[{_shown(name)}] is not a string of YAML text")
    return files


def _tar_files(body: bytes) -> dict[str, str]:
    """The .yaml/.yml files at the archive's top level; sub-folders (tests/) are left out, as by load_rules."""
    import tarfile  # here: only an uploaded archive needs it, and each process was ~0.25 MB the larger for it (issue 22)

    files, total = {}, 0
    try:
        with tarfile.open(fileobj=_Inflated(body), mode="r|") as archive:
            for count, member in enumerate(archive, 1):
                total += member.size  # checked before the member's content is read
                if count > MAX_ARCHIVE_ENTRIES or total > MAX_BYTES:
                    raise BundleError(f"the archive is bigger than {MAX_BYTES} bytes or {MAX_ARCHIVE_ENTRIES} entries")
                name = _archive_name(member.name)
                if member.isfile() and _is_rule_file(name):
                    _check_name(name)  # before its text: a text's RuleError would name the file in full
                    files[name] = _text(archive.extractfile(member).read(), name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"the body is not a gzip'd tar archive: {exc}") from exc
    return files


class _Inflated:
    """The gzip'd body inflated as tarfile reads it, refused past MAX_INFLATED bytes.

    tarfile's own "r|gz" inflates without a bound: a 2 MB upload holding a 1.9 GB long name in one
    header took 3.9 GB and 17 s of the web process before its member was seen.
    """

    def __init__(self, body: bytes):
        import gzip  # here, as tarfile is (see _tar_files)

        self.file, self.read_so_far = gzip.GzipFile(fileobj=io.BytesIO(body)), 0

    def read(self, size: int) -> bytes:
        chunk = self.file.read(size)
        self.read_so_far += len(chunk)
        if self.read_so_far > MAX_INFLATED:
            raise BundleError(f"the archive inflates to more than {MAX_INFLATED} bytes")
        return chunk


def _archive_name(name: str) -> str:
    """The member's name relative to the archive root; raises BundleError for names that escape it."""
    if name.startswith("/") or ".." in name.split("/"):
        raise BundleError(f"archive entry {_shown(name)} points outside the rules folder")
    while name.startswith("./"):
        name = name[2:]
    return name


def _is_rule_file(name: str) -> bool:
    """A YAML file at the top level; hidden ones (macOS tar's `._x.yaml` resource forks) are not rules."""
    return "/" not in name and not name.startswith(".") and name.endswith((".yaml", ".yml"))


def _check_name(name: str) -> None:
    if not _FILE_NAME.fullmatch(name):
        raise BundleError(f"{_shown(name)} is not a plain file name ending in .yaml or .yml")


def _shown(name: str) -> str:
    """A file name quoted for an error message, cut after SHOWN_NAME_CHARS characters."""
    return repr(name if len(name) <= SHOWN_NAME_CHARS else name[:SHOWN_NAME_CHARS] + "…")


def _checked(files: dict[str, str]) -> dict[str, str]:
    if not files:
        raise BundleError("the bundle holds no .yaml or .yml rule files")
    if len(files) > MAX_FILES:
        raise BundleError(f"the bundle holds {len(files)} files; at most {MAX_FILES} are taken")
    for name in files:
        _check_name(name)
    size = sum(len(text.encode()) for text in files.values())
    if size > MAX_BYTES:
        raise BundleError(f"the bundle holds {size} bytes of YAML; at most {MAX_BYTES} are taken")
    return files
