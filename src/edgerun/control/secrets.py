"""Function secrets, encrypted at rest on the control plane.

Values are sealed with AES-256-GCM under one master key before they reach
SQLite, so the database (and its backups) hold only ciphertext. Each
ciphertext is bound to its function and key name, so a blob copied to another
row does not decrypt. A value is never put into an error message: messages
name the function, the key, sizes or a line number, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgerun.dbtx import transaction
from edgerun.errors import bad_request, not_found
from edgerun.files import write_new
from edgerun.models import ENV_KEY_RE, RESERVED_ENV_PREFIXES, validate_function_name

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS = 100
MAX_TOTAL_BYTES = 256 * 1024
KEY_FILE_NAME = "secrets.key"

# Blobs are nonce || ciphertext || tag, so a value's size is known without decrypting it.
_OVERHEAD = NONCE_BYTES + TAG_BYTES


class SecretCorrupt(Exception):
    """A stored secret does not decrypt: wrong master key, or the blob was altered or moved."""


# --- master key -----------------------------------------------------------------


def _decode_key(text: str, where: str) -> bytes:
    """Base64 (urlsafe, padding optional) of exactly 32 bytes. ``where`` says where
    the key came from; the text itself is never part of the error."""
    text = text.strip()
    if not text:
        raise ValueError(f"master key from {where} is empty")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"master key from {where} is not urlsafe base64 of {KEY_BYTES} bytes"
        ) from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"master key from {where} is {len(key)} bytes, expected {KEY_BYTES}")
    return key


def encode_key(key: bytes) -> str:
    """The text form of a master key, as :func:`load_master_key` reads it."""
    return base64.urlsafe_b64encode(key).decode("ascii")


def _read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ValueError(f"master key file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"master key file {str(path)!r} is not base64 text") from None
    return _decode_key(text, f"file {str(path)!r}")


def _create_key_file(path: Path) -> bytes:
    """Create ``path`` holding a fresh key (owner-only), or read it if a racing
    process created it first."""
    key = os.urandom(KEY_BYTES)
    if not write_new(path, (encode_key(key) + "\n").encode("ascii")):
        return _read_key_file(path)
    return key


def load_master_key(data_dir: Path, *, key_file: str = "", key_env: str = "") -> bytes:
    """The 32-byte master key: from the environment variable ``key_env`` if named,
    else from ``key_file`` if given, else ``data_dir/secrets.key``, created on first use.

    Keeping the key outside the data folder (file or variable) means a copy of the
    folder alone does not reveal the secrets."""
    if key_env:
        text = os.environ.get(key_env)
        if text is None:
            raise ValueError(f"environment variable {key_env!r} holding the master key is not set")
        return _decode_key(text, f"environment variable {key_env!r}")
    if key_file:
        return _read_key_file(Path(key_file).expanduser())
    path = Path(data_dir) / KEY_FILE_NAME
    if path.exists():
        return _read_key_file(path)
    return _create_key_file(path)


# --- encryption -----------------------------------------------------------------


def _aad(function: str, name: str) -> bytes:
    """Length-prefixed, so no two (function, name) pairs share associated data."""
    f, n = function.encode(), name.encode()
    return b"edgerun-secret-v1" + len(f).to_bytes(4, "big") + f + len(n).to_bytes(4, "big") + n


class SecretBox:
    """AES-256-GCM with a fresh random nonce per value, bound to (function, name)."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise ValueError(f"master key must be {KEY_BYTES} bytes, got {len(master_key)}")
        self._aead = AESGCM(master_key)

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, function: str, name: str, value: str) -> bytes:
        """``nonce || ciphertext || tag``. 96-bit random nonces are safe far beyond
        the number of secret writes a control plane will ever do under one key."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode("utf-8"), _aad(function, name))

    def open(self, function: str, name: str, blob: bytes) -> str:
        where = f"secret {name!r} of function {function!r}"
        if len(blob) < _OVERHEAD:
            raise SecretCorrupt(f"{where} is truncated")
        try:
            plain = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(function, name))
            return plain.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise SecretCorrupt(
                f"{where} does not decrypt (wrong master key, or the data was altered)"
            ) from None


# --- validation -----------------------------------------------------------------


def validate_secret_name(name: str) -> str:
    """Secrets become environment variables, so their names follow the same rule."""
    if not isinstance(name, str) or not ENV_KEY_RE.match(name):
        shown = repr(name[:64]) if isinstance(name, str) else type(name).__name__
        raise bad_request(
            f"invalid secret name {shown}: use letters, digits and '_', not starting with a digit"
        )
    if name.startswith(RESERVED_ENV_PREFIXES):
        raise bad_request(
            f"secret name {name!r} uses a reserved prefix ({', '.join(RESERVED_ENV_PREFIXES)})"
        )
    return name


def _value_size(name: str, value: object) -> int:
    """UTF-8 size of a valid value. A NUL is refused: no environment variable can hold one."""
    if not isinstance(value, str):
        raise bad_request(f"the value of secret {name!r} must be a string")
    if "\0" in value:
        raise bad_request(f"the value of secret {name!r} contains a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad_request(f"the value of secret {name!r} is not valid UTF-8 text") from None
    if size > MAX_VALUE_BYTES:
        raise bad_request(
            f"the value of secret {name!r} is {size} bytes; the limit is {MAX_VALUE_BYTES}"
        )
    return size


# --- storage --------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (
    function TEXT NOT NULL,
    name TEXT NOT NULL,
    blob BLOB NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, name)
);
CREATE TABLE IF NOT EXISTS secret_versions (
    function TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS key_secrets (
    key_id TEXT PRIMARY KEY,
    blob BLOB NOT NULL
);
"""
_KEY_SCOPE = "\0api-key"
"""The associated data's 'function' for an API key's secret: no function is named so."""


class SecretStore:
    """Encrypted secrets in one SQLite file (WAL), safe to share between threads.

    Each function has a version, bumped by every change, so a node holding
    version N knows to refetch when it sees another. Versions only grow: the row
    outlives the function's secrets, so a recreated function cannot repeat an old
    version with new contents."""

    def __init__(self, path: Path | str, box: SecretBox) -> None:
        self._box = box
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with transaction(self._db, self._lock) as cur:
            yield cur

    @staticmethod
    def _bump(cur: sqlite3.Cursor, function: str) -> int:
        row = cur.execute(
            "INSERT INTO secret_versions (function, version) VALUES (?, 1)"
            " ON CONFLICT (function) DO UPDATE SET version = secret_versions.version + 1"
            " RETURNING version",
            (function,),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _version(cur: sqlite3.Cursor, function: str) -> int:
        row = cur.execute(
            "SELECT version FROM secret_versions WHERE function = ?", (function,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def put(self, function: str, name: str, value: str) -> int:
        """Set one secret; returns the function's new version."""
        return self.put_many(function, {name: value})

    def put_many(self, function: str, items: Mapping[str, str]) -> int:
        """Set several secrets in one transaction (all or none); returns the new
        version. An empty ``items`` changes nothing and returns the current version."""
        validate_function_name(function)
        sizes = {validate_secret_name(name): _value_size(name, v) for name, v in items.items()}
        blobs = {name: self._box.seal(function, name, v) for name, v in items.items()}
        now = time.time()
        with self._tx() as cur:
            if not blobs:
                return self._version(cur, function)
            stored = dict(
                cur.execute(
                    "SELECT name, LENGTH(blob) - ? FROM secrets WHERE function = ?",
                    (_OVERHEAD, function),
                ).fetchall()
            )
            stored.update(sizes)
            if len(stored) > MAX_SECRETS:
                raise bad_request(
                    f"function {function!r} would have {len(stored)} secrets;"
                    f" the limit is {MAX_SECRETS}"
                )
            total = sum(stored.values())
            if total > MAX_TOTAL_BYTES:
                raise bad_request(
                    f"the secrets of function {function!r} would total {total} bytes;"
                    f" the limit is {MAX_TOTAL_BYTES}"
                )
            cur.executemany(
                "INSERT INTO secrets (function, name, blob, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (function, name)"
                " DO UPDATE SET blob = excluded.blob, updated_at = excluded.updated_at",
                [(function, name, blob, now) for name, blob in blobs.items()],
            )
            return self._bump(cur, function)

    def put_key_secret(self, key_id: str, secret: str) -> None:
        """Keep an API key's secret sealed, so SigV4 signing keys can be derived from it
        (the key itself is checked by its digest, as before)."""
        blob = self._box.seal(_KEY_SCOPE, key_id, secret)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO key_secrets (key_id, blob) VALUES (?, ?)"
                " ON CONFLICT (key_id) DO UPDATE SET blob = excluded.blob",
                (key_id, blob),
            )

    def key_secret(self, key_id: str) -> str | None:
        """An API key's secret (None for a key made before secrets were kept)."""
        with self._lock:
            row = self._db.execute(
                "SELECT blob FROM key_secrets WHERE key_id = ?", (key_id,)
            ).fetchone()
        return None if row is None else self._box.open(_KEY_SCOPE, key_id, bytes(row[0]))

    def names(self, function: str) -> list[str]:
        """The function's secret names, sorted; never their values."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM secrets WHERE function = ? ORDER BY name", (function,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def remove(self, function: str, name: str) -> int:
        """Delete one secret; returns the new version. 404 if there is no such secret."""
        with self._tx() as cur:
            gone = cur.execute(
                "DELETE FROM secrets WHERE function = ? AND name = ?", (function, name)
            ).rowcount
            if not gone:
                raise not_found(f"function {function!r} has no secret {name[:64]!r}")
            return self._bump(cur, function)

    def remove_function(self, function: str) -> None:
        """Delete all of a function's secrets (on function delete). The version is
        bumped, not dropped, so it keeps growing if the function comes back."""
        with self._tx() as cur:
            gone = cur.execute("DELETE FROM secrets WHERE function = ?", (function,)).rowcount
            if gone:
                self._bump(cur, function)

    def remove_tenant(self, tenant: str) -> None:
        """Delete the secrets of every function of ``tenant`` (on tenant delete),
        bumping each one's version."""
        prefix = tenant + "."
        with self._tx() as cur:
            functions = [
                str(row[0])
                for row in cur.execute(
                    "SELECT DISTINCT function FROM secrets WHERE substr(function, 1, ?) = ?",
                    (len(prefix), prefix),
                ).fetchall()
            ]
            for function in functions:
                cur.execute("DELETE FROM secrets WHERE function = ?", (function,))
                self._bump(cur, function)

    def values(self, function: str) -> dict[str, str]:
        """The function's secrets, decrypted, for the node that runs it.

        Raises :class:`SecretCorrupt` if any of them does not decrypt."""
        with self._lock:
            rows = self._db.execute(
                "SELECT name, blob FROM secrets WHERE function = ? ORDER BY name", (function,)
            ).fetchall()
        return {str(name): self._box.open(function, str(name), bytes(blob)) for name, blob in rows}

    def version(self, function: str) -> int:
        """The function's secrets version; 0 if it never had any."""
        with self._lock:
            return self._version(self._db.cursor(), function)


# --- .env files -----------------------------------------------------------------

_EXPORT_RE = re.compile(r"export\s+")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
_TRAILER_RE = re.compile(r"\s*(#.*)?")
_INLINE_COMMENT_RE = re.compile(r"\s#")


def _malformed(lineno: int, why: str) -> Exception:
    # The line itself is never quoted: it may hold a secret.
    return bad_request(f".env line {lineno}: {why}")


def _double_quoted(rest: str, lineno: int) -> tuple[str, str]:
    """The value of ``"..."`` at the start of ``rest`` (escapes applied) and what follows."""
    out: list[str] = []
    i = 1
    while i < len(rest):
        c = rest[i]
        if c == '"':
            return "".join(out), rest[i + 1 :]
        if c == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            # Unknown escapes stay as written, so Windows paths survive.
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    raise _malformed(lineno, "unterminated double quote")


def parse_dotenv(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines, as in the .env files most tools write.

    Supported: an ``export`` prefix, ``#`` comment and blank lines, ``'single'``
    quotes (literal), ``"double"`` quotes (with ``\\n \\r \\t \\" \\\\`` escapes),
    unquoted values trimmed and cut at `` #`` (a comment). Values are literal:
    no ``$VAR`` expansion. A quoted value ends on its line. A repeated key keeps
    its last value. A bad line is reported by number only."""
    result: dict[str, str] = {}
    for lineno, raw in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):
        line = raw.removesuffix("\r").strip()
        if not line or line.startswith("#"):
            continue
        if m := _EXPORT_RE.match(line):
            line = line[m.end() :]
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not eq:
            raise _malformed(lineno, "expected KEY=VALUE")
        if not ENV_KEY_RE.match(key):
            raise _malformed(lineno, "invalid key: use letters, digits and '_'")
        unquoted, rest = rest, rest.lstrip()
        if rest.startswith("'"):
            end = rest.find("'", 1)
            if end < 0:
                raise _malformed(lineno, "unterminated single quote")
            value, trailer = rest[1:end], rest[end + 1 :]
        elif rest.startswith('"'):
            value, trailer = _double_quoted(rest, lineno)
        else:
            # " #" starts a comment, even right after "=", but "#" inside a value does not.
            if m := _INLINE_COMMENT_RE.search(unquoted):
                unquoted = unquoted[: m.start()]
            value, trailer = unquoted.strip(), ""
        if not _TRAILER_RE.fullmatch(trailer):
            raise _malformed(lineno, "unexpected text after the closing quote")
        result[key] = value
    return result
