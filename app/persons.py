"""Enrolled persons: a person's neutral face kept between calls (``POST /persons``, ``?person=<id>``).

What is stored is what the relative reading needs and nothing more: the ``Reference`` (the expression
network's mean log-probabilities and each AU's mean probability over the enrolment photos, the model versions
that produced them), the time it was made and expires, and the scope of the API key that made it (a hash of the
key, never the key). No photo, crop, landmark or embedding is kept. Each record expires ``ttl_s`` after its
enrolment (``MICROFACS_PERSONS_TTL_S``) and ``DELETE /persons/{id}`` removes it at once.

Two back ends, one interface: in memory (the default; one worker process's own, gone on restart) or one JSON
file per person under ``MICROFACS_PERSONS_DIR`` (shared by every worker and replica that mounts it; written
atomically, mode 0600). Ids are 128-bit random tokens: unguessable, so one tenant cannot find another's, and a
person made under another key reads as not found.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.errors import ApiError
from app.reference import Reference

_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
PUBLIC_SCOPE = "public"  # the scope of every person when the server has no API key


def key_scope(key: str | None) -> str:
    """The tenant a person belongs to: a hash of the API key the request sent (``PUBLIC_SCOPE`` without keys)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32] if key else PUBLIC_SCOPE


@dataclass(frozen=True)
class Person:
    person_id: str
    scope: str
    created: float  # unix seconds
    expires: float
    reference: Reference

    def to_json(self) -> dict[str, Any]:
        return {"person_id": self.person_id, "scope": self.scope, "created": self.created, "expires": self.expires,
                "reference": self.reference.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Person:
        reference = replace(Reference.from_json(data["reference"]), person_id=data["person_id"])
        return cls(data["person_id"], data["scope"], float(data["created"]), float(data["expires"]), reference)


def not_found(person_id: str) -> ApiError:
    return ApiError(404, "person_not_found", f"no person {person_id!r} for this API key (unknown, expired or deleted)")


class PersonStore:
    """Thread-safe; ``directory`` None keeps the persons in this process's memory."""

    def __init__(self, directory: Path | None, ttl_s: float, max_persons: int, clock=time.time) -> None:
        self.directory, self.ttl_s, self.max_persons, self.clock = directory, ttl_s, max_persons, clock
        self._memory: dict[str, Person] = {}
        self._lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.purge()

    # -- the interface -----------------------------------------------------------------------------------------

    def create(self, scope: str, reference: Reference) -> Person:
        now = self.clock()
        person_id = secrets.token_urlsafe(16)
        person = Person(person_id, scope, now, now + self.ttl_s, replace(reference, person_id=person_id))
        with self._lock:
            if self._count() >= self.max_persons:
                self._purge_locked()
                if self._count() >= self.max_persons:
                    raise ApiError(429, "persons_full", f"the server holds its limit of {self.max_persons} persons; "
                                   "delete some (DELETE /persons/{id}) or wait for them to expire")
            self._write(person)
        return person

    def get(self, scope: str, person_id: str) -> Person:
        if not _ID.match(person_id):
            raise not_found(person_id)
        with self._lock:
            person = self._read(person_id)
        if person is None or person.scope != scope:
            raise not_found(person_id)
        if person.expires <= self.clock():
            self.delete(scope, person_id, missing_ok=True)
            raise not_found(person_id)
        return person

    def delete(self, scope: str, person_id: str, missing_ok: bool = False) -> None:
        if not _ID.match(person_id):
            raise not_found(person_id)
        with self._lock:
            person = self._read(person_id)
            if person is None or person.scope != scope:
                if missing_ok:
                    return
                raise not_found(person_id)
            self._remove(person_id)

    def purge(self) -> int:
        """Removes the expired persons; returns how many."""
        with self._lock:
            return self._purge_locked()

    # -- the back ends -----------------------------------------------------------------------------------------

    def _path(self, person_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{person_id}.json"

    def _count(self) -> int:
        return len(self._memory) if self.directory is None else sum(1 for _ in self.directory.glob("*.json"))

    def _write(self, person: Person) -> None:
        if self.directory is None:
            self._memory[person.person_id] = person
            return
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".person-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(person.to_json(), handle)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path(person.person_id))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self, person_id: str) -> Person | None:
        if self.directory is None:
            return self._memory.get(person_id)
        try:
            return Person.from_json(json.loads(self._path(person_id).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):  # a damaged record reads as absent and is removed
            self._path(person_id).unlink(missing_ok=True)
            return None

    def _remove(self, person_id: str) -> None:
        if self.directory is None:
            self._memory.pop(person_id, None)
        else:
            self._path(person_id).unlink(missing_ok=True)

    def _purge_locked(self) -> int:
        now = self.clock()
        ids = list(self._memory) if self.directory is None else [p.stem for p in self.directory.glob("*.json")]
        removed = 0
        for person_id in ids:
            person = self._read(person_id)
            if person is None or person.expires <= now:
                self._remove(person_id)
                removed += 1
        return removed
