"""The model registry: versioned, immutable models and movable aliases, in storage.

Layout under the registry root (a local path or ``s3://bucket/prefix``)::

    models/<name>/<version>/_claim.json     who took this version number (written first)
    models/<name>/<version>/model.xml ...   the IR files
    models/<name>/<version>/card.md         the card for people
    models/<name>/<version>/card.json       the card: written last, so it marks a published version
    models/<name>/aliases/<alias>.json      {"version": N, "history": [...], "events": [...]}

Why readers never see a partial state:

- **Versions** are numbered by the registry: a writer claims ``max + 1`` with a create-only
  write of ``_claim.json`` (``If-None-Match: *`` on S3, ``O_EXCL`` locally); a loser takes
  the next number. A number is never reused, even if its writer died before publishing, and
  a version folder is never written again. Only folders with ``card.json`` count as versions.
- **Aliases** are one small object each, replaced by one atomic write (a rename locally, a
  single PUT on S3) that is conditional on the object read (``If-Match``), so two promoters
  racing cannot lose each other's history. A reader resolves an alias with one read, then
  reads an immutable version.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import storage
from patchray.errors import IntegrityError, NotFoundError, RegistryError
from patchray.registry.card import CARD_JSON, CARD_MD, ModelCard, ir_files, parse_card, sha256_file
from patchray.registry.card import render_markdown as render_card

log = logging.getLogger(__name__)
CLAIM = "_claim.json"
ALIASES = "aliases"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
REGISTRY_ENV = "PATCHRAY_REGISTRY"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "patchray"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} is not valid: use letters, digits, '.', '_' "
                            "and '-' (up to 128), starting with a letter or digit")
    return name


def check_alias(alias: str) -> str:
    if not ALIAS_RE.match(alias):
        raise RegistryError(f"alias {alias!r} is not valid: lowercase letters, digits, '_' and "
                            "'-', starting with a letter (e.g. production, staging)")
    return alias


@dataclass(frozen=True)
class ModelRef:
    """``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS``."""

    name: str
    selector: int | str | None = None  # None: the latest version

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        name, sep, sel = text.partition("@")
        check_name(name)
        if not sep:
            return cls(name)
        if sel.isdigit():
            return cls(name, int(sel))
        return cls(name, check_alias(sel))

    def __str__(self) -> str:
        return self.name if self.selector is None else f"{self.name}@{self.selector}"


@dataclass(frozen=True)
class Alias:
    alias: str
    version: int
    history: list[int]  # versions the alias has pointed at, oldest first; rollback pops
    events: list[dict[str, Any]]

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Alias:
        try:
            doc = json.loads(data)
            return cls(doc["alias"], int(doc["version"]), [int(v) for v in doc["history"]],
                       list(doc.get("events", [])))
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"{where}: not a patchray alias record ({e})") from None

    def to_json(self) -> bytes:
        return json.dumps({"alias": self.alias, "version": self.version,
                           "history": self.history, "events": self.events}, indent=2).encode()


class ModelRegistry:
    """Models under ``root`` (local path or ``s3://``)."""

    def __init__(self, root: str):
        if not root:
            raise RegistryError(f"no registry root: pass --registry URI or set {REGISTRY_ENV}")
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"ModelRegistry({self.root!r})"

    # ----------------------------------------------------------------- where things are

    def uri(self, name: str, *parts: str | int) -> str:
        return storage.join(self.root, "models", name, *(str(p) for p in parts))

    def _versions_with(self, name: str, marker: str) -> list[int]:
        prefix = self.uri(name)
        found = set()
        for uri in storage.list_files(prefix, marker):
            rel = uri[len(prefix) :].strip("/").split("/")
            if len(rel) == 2 and rel[0].isdigit() and rel[1] == marker:
                found.add(int(rel[0]))
        return sorted(found)

    # ----------------------------------------------------------------- reading

    def names(self) -> list[str]:
        prefix = storage.join(self.root, "models")
        names = set()
        for uri in storage.list_files(prefix, CARD_JSON):
            rel = uri[len(prefix) :].strip("/").split("/")
            if len(rel) == 3:
                names.add(rel[0])
        return sorted(names)

    def versions(self, name: str) -> list[int]:
        """Published versions (with ``card.json``), ascending."""
        return self._versions_with(check_name(name), CARD_JSON)

    def card(self, name: str, version: int) -> ModelCard:
        uri = self.uri(name, version, CARD_JSON)
        try:
            data = storage.read_bytes(uri)
        except NotFoundError:
            have = self.versions(name)
            raise RegistryError(
                f"{name}@{version} is not in the registry {self.root} (versions: "
                f"{', '.join(map(str, have)) or 'none'})") from None
        return parse_card(data, where=uri)

    def alias(self, name: str, alias: str) -> Alias | None:
        uri = self.uri(name, ALIASES, f"{check_alias(alias)}.json")
        try:
            return Alias.from_json(storage.read_bytes(uri), where=uri)
        except NotFoundError:
            return None

    def aliases(self, name: str) -> dict[str, Alias]:
        out = {}
        for uri in storage.list_files(self.uri(name, ALIASES), ".json"):
            record = Alias.from_json(storage.read_bytes(uri), where=uri)
            out[record.alias] = record
        return out

    def resolve(self, ref: str | ModelRef) -> ModelCard:
        """The card of ``NAME`` (latest), ``NAME@VERSION`` or ``NAME@ALIAS``."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        if isinstance(ref.selector, int):
            return self.card(ref.name, ref.selector)
        if ref.selector is None:
            versions = self.versions(ref.name)
            if not versions:
                known = ", ".join(self.names()) or "none"
                raise RegistryError(f"no model {ref.name!r} in the registry {self.root} "
                                    f"(models: {known})")
            return self.card(ref.name, versions[-1])
        record = self.alias(ref.name, ref.selector)
        if record is None:
            have = ", ".join(self.aliases(ref.name)) or "none"
            raise RegistryError(f"{ref}: model {ref.name!r} has no alias {ref.selector!r} "
                                f"(aliases: {have}); set it with patchray registry promote")
        return self.card(ref.name, record.version)

    # ----------------------------------------------------------------- writing

    def register(self, source_dir: str | Path, card: ModelCard, *,
                 alias: str | None = None) -> ModelCard:
        """Publish the IR files in ``source_dir`` with ``card`` as a new version; return
        the card as published (its version and file hashes filled in)."""
        name = check_name(card.name)
        src = Path(source_dir)
        files = ir_files(card)
        missing = [f for f in files if not (src / f).is_file()]
        if missing:
            raise RegistryError(f"cannot register {name} from {src}: missing {missing}")
        hashes = {f: sha256_file(src / f) for f in files}
        version = self._claim(name)
        published = card.model_copy(update={"version": version, "files": hashes})
        for f in files:
            storage.write_bytes(self.uri(name, version, f), (src / f).read_bytes())
        storage.write_bytes(self.uri(name, version, CARD_MD), render_card(published).encode())
        storage.write_bytes(self.uri(name, version, CARD_JSON),  # last: publishes
                            published.model_dump_json(indent=2).encode())
        log.debug("registered %s in %s", published.ref, self.root)
        if alias:
            self.promote(name, version, alias)
        return published

    def _claim(self, name: str) -> int:
        claim = json.dumps({"by": _who(), "at": _now(), "id": uuid.uuid4().hex}).encode()
        version = max(self._versions_with(name, CLAIM), default=0) + 1
        while not storage.create_object(self.uri(name, version, CLAIM), claim):
            version += 1  # another writer took it: numbers are never shared or reused
        return version

    def promote(self, name: str, version: int, alias: str, *, verify: bool = True) -> Alias:
        """Point ``alias`` at ``version`` (which must be published and, by default, verify)."""
        check_alias(alias)
        self.card(name, version)  # exists
        if verify:
            self.verify(name, version)

        def change(old: bytes | None) -> bytes:
            prev = Alias.from_json(old, where=alias) if old else Alias(alias, 0, [], [])
            event = {"action": "promote", "version": version, "from": prev.version or None,
                     "at": _now(), "by": _who()}
            history = prev.history if prev.history[-1:] == [version] else [*prev.history, version]
            return Alias(alias, version, history, [*prev.events, event]).to_json()

        uri = self.uri(name, ALIASES, f"{alias}.json")
        record = Alias.from_json(storage.update_object(uri, change), where=uri)
        log.debug("%s@%s -> version %d", name, alias, version)
        return record

    def rollback(self, name: str, alias: str) -> Alias:
        """Point ``alias`` back at the version it pointed at before the current one."""
        check_alias(alias)
        uri = self.uri(name, ALIASES, f"{alias}.json")

        def change(old: bytes | None) -> bytes:
            if old is None:
                raise RegistryError(f"{name}@{alias} does not exist: nothing to roll back")
            prev = Alias.from_json(old, where=uri)
            if len(prev.history) < 2:
                raise RegistryError(f"{name}@{alias} has pointed only at version "
                                    f"{prev.version}: there is no earlier version to roll back to")
            history = prev.history[:-1]
            event = {"action": "rollback", "version": history[-1], "from": prev.version,
                     "at": _now(), "by": _who()}
            return Alias(alias, history[-1], history, [*prev.events, event]).to_json()

        record = Alias.from_json(storage.update_object(uri, change), where=uri)
        log.debug("%s@%s rolled back to version %d", name, alias, record.version)
        return record

    # ----------------------------------------------------------------- integrity

    def verify(self, name: str, version: int) -> dict[str, str]:
        """Check every file's sha256 against the card; return them. Raises IntegrityError."""
        card = self.card(name, version)
        if not card.files:
            raise IntegrityError(f"{card.ref}: its card lists no files to verify")
        bad = []
        for f, expected in card.files.items():
            uri = self.uri(name, version, f)
            try:
                got = storage.sha256(uri)
            except NotFoundError:
                bad.append(f"{f}: missing")
                continue
            if got != expected:
                bad.append(f"{f}: sha256 {got[:12]}... != card's {expected[:12]}...")
        if bad:
            raise IntegrityError(f"{card.ref} in {self.root} does not match its card: "
                                 + "; ".join(bad))
        return dict(card.files)

    def local_dir(self, card: ModelCard, *, cache: Path = DEFAULT_CACHE) -> Path:
        """A local folder holding ``card``'s version: the folder itself for a local registry,
        otherwise a verified copy in ``cache`` (downloaded once, swapped in by rename)."""
        src = self.uri(card.name, card.version)
        if not storage.is_remote(self.root):
            return Path(storage.resolve(src)[1])
        target = cache / "models" / storage.cache_key(self.root) / card.name / str(card.version)
        if (target / CARD_JSON).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        try:
            for f, expected in card.files.items():
                (tmp / f).write_bytes(storage.read_bytes(storage.join(src, f)))
                if sha256_file(tmp / f) != expected:
                    raise IntegrityError(f"{card.ref}: downloaded {f} does not match its card")
            (tmp / CARD_JSON).write_text(card.model_dump_json(indent=2))
            try:
                tmp.rename(target)
            except OSError:  # another process finished the same download first
                if not (target / CARD_JSON).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def default_root(runs_root: str = "runs") -> str:
    """``$PATCHRAY_REGISTRY``, else ``registry`` beside the runs folder."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return env
    if storage.is_remote(runs_root):
        return storage.join(runs_root.rstrip("/").rsplit("/", 1)[0], "registry")
    return str(Path(runs_root).resolve().parent / "registry")
