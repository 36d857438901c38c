"""Secrets at rest: the master key, AES-GCM sealing, the SQLite store and the .env parser.

Every failure path also checks that the secret value is absent from the error."""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.control.secrets import (
    MAX_SECRETS,
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    SecretBox,
    SecretCorrupt,
    SecretStore,
    encode_key,
    load_master_key,
    parse_dotenv,
)
from edgerun.errors import ApiError

SECRET = "s3cr3t-Value-that-must-never-leak"
KEY = bytes(range(32))


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KEY)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "secrets.db"


@pytest.fixture
def store(db_path: Path, box: SecretBox) -> Iterator[SecretStore]:
    s = SecretStore(db_path, box)
    yield s
    s.close()


def raw_blob(db_path: Path, function: str, name: str) -> bytes:
    import sqlite3

    with sqlite3.connect(db_path) as db:
        row = db.execute(
            "SELECT blob FROM secrets WHERE function = ? AND name = ?", (function, name)
        ).fetchone()
    return bytes(row[0])


def assert_hidden(err: BaseException, value: str = SECRET) -> None:
    text = str(err)
    if isinstance(err, ApiError):
        text += repr(err.body())
    assert value not in text
    assert err.__cause__ is None or value not in str(err.__cause__)


# --- master key ---------------------------------------------------------------


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    key = load_master_key(data)
    path = data / "secrets.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == encode_key(key) + "\n"
    assert load_master_key(data) == key
    assert [p.name for p in data.iterdir()] == ["secrets.key"]  # no temporary left behind


def test_key_file_creation_race_yields_one_key(tmp_path: Path) -> None:
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_master_key(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1


def test_key_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGERUN_TEST_KEY", encode_key(KEY))
    assert load_master_key(tmp_path, key_env="EDGERUN_TEST_KEY", key_file="/nope") == KEY
    assert not (tmp_path / "secrets.key").exists()


def test_key_from_env_without_padding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", encode_key(KEY).rstrip("="))
    assert load_master_key(tmp_path, key_env="K") == KEY


def test_key_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGERUN_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match=r"EDGERUN_TEST_KEY.*not set"):
        load_master_key(tmp_path, key_env="EDGERUN_TEST_KEY")


@pytest.mark.parametrize(
    "bad",
    [
        SECRET,  # not base64 at all
        base64.urlsafe_b64encode(SECRET.encode()).decode(),  # base64, wrong length
        encode_key(KEY)[:-4] + "!!!=",  # a character outside the alphabet
        "   ",
    ],
)
def test_bad_env_key_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("K", bad)
    with pytest.raises(ValueError, match="environment variable 'K'") as exc:
        load_master_key(tmp_path, key_env="K")
    if bad.strip():
        assert_hidden(exc.value, bad)
    assert exc.value.__cause__ is None


def test_key_from_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(encode_key(KEY) + "\n")
    assert load_master_key(tmp_path / "data", key_file=str(path)) == KEY
    assert not (tmp_path / "data" / "secrets.key").exists()


def test_bad_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text(SECRET)
    with pytest.raises(ValueError, match=r"master\.key") as exc:
        load_master_key(tmp_path, key_file=str(path))
    assert_hidden(exc.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_master_key(tmp_path, key_file=str(tmp_path / "missing.key"))


def test_box_rejects_short_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")


# --- SecretBox ----------------------------------------------------------------


def test_seal_open_round_trip(box: SecretBox) -> None:
    blob = box.seal("hello", "API_KEY", SECRET)
    assert SECRET.encode() not in blob
    assert box.open("hello", "API_KEY", blob) == SECRET


def test_nonce_is_fresh(box: SecretBox) -> None:
    a, b = box.seal("hello", "K", SECRET), box.seal("hello", "K", SECRET)
    assert a[:12] != b[:12] and a != b


@pytest.mark.parametrize(
    ("function", "name"),
    [("other", "API_KEY"), ("hello", "OTHER"), ("hell", "oAPI_KEY"), ("hello", "api_key")],
)
def test_blob_is_bound_to_function_and_name(box: SecretBox, function: str, name: str) -> None:
    blob = box.seal("hello", "API_KEY", SECRET)
    with pytest.raises(SecretCorrupt) as exc:
        box.open(function, name, blob)
    assert_hidden(exc.value)


def test_wrong_master_key(box: SecretBox) -> None:
    blob = box.seal("hello", "API_KEY", SECRET)
    with pytest.raises(SecretCorrupt, match="wrong master key"):
        SecretBox(os.urandom(32)).open("hello", "API_KEY", blob)


def test_tampered_or_truncated_blob(box: SecretBox) -> None:
    blob = bytearray(box.seal("hello", "K", SECRET))
    blob[20] ^= 1
    with pytest.raises(SecretCorrupt):
        box.open("hello", "K", bytes(blob))
    with pytest.raises(SecretCorrupt, match="truncated"):
        box.open("hello", "K", bytes(blob[:27]))


def test_box_repr_hides_key(box: SecretBox) -> None:
    assert encode_key(KEY) not in repr(box) and "hidden" in repr(box)


# --- SecretStore ----------------------------------------------------------------


def test_round_trip(store: SecretStore) -> None:
    assert store.put("hello", "API_KEY", SECRET) == 1
    assert store.put("hello", "DB_URL", "postgres://x") == 2
    assert store.names("hello") == ["API_KEY", "DB_URL"]
    assert store.values("hello") == {"API_KEY": SECRET, "DB_URL": "postgres://x"}
    assert store.values("other") == {} and store.names("other") == []


def test_overwrite_and_unicode(store: SecretStore) -> None:
    store.put("hello", "K", "one")
    store.put("hello", "K", "zwei ✓ 三")
    assert store.values("hello") == {"K": "zwei ✓ 三"}
    store.put("hello", "EMPTY", "")
    assert store.values("hello")["EMPTY"] == ""


def test_survives_reopen(db_path: Path, box: SecretBox) -> None:
    s = SecretStore(db_path, box)
    s.put("hello", "K", SECRET)
    s.close()
    s = SecretStore(db_path, SecretBox(KEY))
    try:
        assert s.values("hello") == {"K": SECRET}
        assert s.version("hello") == 1
    finally:
        s.close()


def test_no_plaintext_on_disk(store: SecretStore, db_path: Path) -> None:
    store.put_many("hello", {"A": SECRET, "B": SECRET + "-2"})
    store.put("hello", "C", SECRET + "-3")
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert files
    for path in files:  # the database and its WAL
        data = path.read_bytes()
        assert SECRET.encode() not in data
        assert SECRET.encode("utf-16-le") not in data
    assert store.values("hello")["A"] == SECRET


def test_swapped_blobs_do_not_decrypt(store: SecretStore, db_path: Path) -> None:
    import sqlite3

    store.put("alpha", "TOKEN", SECRET)
    store.put("beta", "TOKEN", "beta-value")
    alpha = raw_blob(db_path, "alpha", "TOKEN")
    with sqlite3.connect(db_path) as db:
        db.execute(
            "UPDATE secrets SET blob = ? WHERE function = 'beta' AND name = 'TOKEN'", (alpha,)
        )
    with pytest.raises(SecretCorrupt) as exc:
        store.values("beta")
    assert_hidden(exc.value)


def test_wrong_master_key_on_store(db_path: Path, box: SecretBox) -> None:
    s = SecretStore(db_path, box)
    s.put("hello", "K", SECRET)
    s.close()
    s = SecretStore(db_path, SecretBox(os.urandom(32)))
    try:
        assert s.names("hello") == ["K"]  # names do not need the key
        with pytest.raises(SecretCorrupt) as exc:
            s.values("hello")
        assert_hidden(exc.value)
    finally:
        s.close()


def test_versions(store: SecretStore) -> None:
    assert store.version("hello") == 0
    assert store.put("hello", "A", "1") == 1
    assert store.put_many("hello", {"B": "2", "C": "3"}) == 2
    assert store.put("hello", "A", "1") == 3  # a rewrite is a change too
    assert store.remove("hello", "B") == 4
    assert store.version("hello") == 4
    assert store.version("other") == 0
    assert store.put("other", "A", "1") == 1  # each function counts on its own
    assert store.put_many("hello", {}) == 4  # nothing to change


def test_remove(store: SecretStore) -> None:
    store.put_many("hello", {"A": "1", "B": SECRET})
    store.remove("hello", "B")
    assert store.names("hello") == ["A"]
    assert store.values("hello") == {"A": "1"}


def test_remove_missing_is_404(store: SecretStore) -> None:
    store.put("hello", "A", SECRET)
    with pytest.raises(ApiError) as exc:
        store.remove("hello", "MISSING")
    assert exc.value.status == 404 and exc.value.type == "NotFound"
    assert "MISSING" in exc.value.message
    assert_hidden(exc.value)
    assert store.version("hello") == 1  # a failed remove changes nothing


def test_remove_function_keeps_version_growing(store: SecretStore) -> None:
    store.put_many("hello", {"A": "1", "B": "2"})
    store.put("other", "A", "1")
    store.remove_function("hello")
    assert store.names("hello") == [] and store.values("hello") == {}
    assert store.version("hello") == 2
    assert store.names("other") == ["A"]
    # A recreated function must not repeat a version a node may have cached.
    assert store.put("hello", "A", "new") == 3
    store.remove_function("nothing-here")
    assert store.version("nothing-here") == 0


def test_put_many_is_atomic(store: SecretStore) -> None:
    store.put("hello", "A", "1")
    with pytest.raises(ApiError):
        store.put_many("hello", {"B": "2", "EDGERUN_X": "3"})
    with pytest.raises(ApiError):
        store.put_many("hello", {"B": "2", "C": "x" * (MAX_VALUE_BYTES + 1)})
    assert store.names("hello") == ["A"]
    assert store.version("hello") == 1


@pytest.mark.parametrize(
    "name", ["1ABC", "A-B", "A B", "", "ÄBC", "A\nB", "EDGERUN_X", "AWS_LAMBDA_Y"]
)
def test_bad_names(store: SecretStore, name: str) -> None:
    with pytest.raises(ApiError) as exc:
        store.put("hello", name, SECRET)
    assert exc.value.status == 400
    assert_hidden(exc.value)
    assert store.names("hello") == []


def test_bad_function_name(store: SecretStore) -> None:
    with pytest.raises(ApiError) as exc:
        store.put("Bad Name", "K", SECRET)
    assert exc.value.status == 400
    assert_hidden(exc.value)


@pytest.mark.parametrize(
    "value",
    [b"bytes", 42, None, SECRET + "\0", SECRET + "\ud800"],
    ids=["bytes", "int", "none", "nul", "surrogate"],
)
def test_bad_values(store: SecretStore, value: object) -> None:
    with pytest.raises(ApiError) as exc:
        store.put("hello", "K", value)  # type: ignore[arg-type]
    assert exc.value.status == 400 and "'K'" in exc.value.message
    assert_hidden(exc.value)


def test_value_size_limit(store: SecretStore) -> None:
    store.put("hello", "MAX", "x" * MAX_VALUE_BYTES)
    big = SECRET + "y" * MAX_VALUE_BYTES
    with pytest.raises(ApiError, match="limit") as exc:
        store.put("hello", "BIG", big)
    assert_hidden(exc.value)
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(ApiError):
        store.put("hello", "WIDE", "é" * (MAX_VALUE_BYTES // 2 + 1))


def test_count_limit(store: SecretStore) -> None:
    store.put_many("hello", {f"K{i}": SECRET for i in range(MAX_SECRETS)})
    store.put("hello", "K0", "overwrite is fine")
    with pytest.raises(ApiError, match=f"limit is {MAX_SECRETS}") as exc:
        store.put("hello", "ONE_MORE", SECRET)
    assert_hidden(exc.value)
    store.remove("hello", "K1")
    store.put("hello", "ONE_MORE", SECRET)
    assert len(store.names("hello")) == MAX_SECRETS


def test_total_size_limit(store: SecretStore) -> None:
    chunk = "x" * MAX_VALUE_BYTES
    store.put_many("hello", {f"K{i}": chunk for i in range(MAX_TOTAL_BYTES // MAX_VALUE_BYTES)})
    with pytest.raises(ApiError, match=f"limit is {MAX_TOTAL_BYTES}") as exc:
        store.put("hello", "MORE", SECRET)
    assert_hidden(exc.value)
    store.put("hello", "K0", "small")  # overwriting frees room
    store.put("hello", "MORE", SECRET)
    store.put("other", "BIG", chunk)  # the limit is per function


def test_threads_share_a_store(store: SecretStore) -> None:
    def work(i: int) -> None:
        for j in range(10):
            store.put("hello", f"T{i}_{j}", str(j))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.names("hello")) == 40
    assert store.version("hello") == 40


# --- .env ---------------------------------------------------------------------


def test_dotenv_basics() -> None:
    text = (
        "\ufeff# a comment\n"
        "\n"
        "PLAIN=value\n"
        "export EXPORTED=yes\n"
        "  SPACED = trimmed value  \r\n"
        "EMPTY=\n"
        "SINGLE='lit \\n $HOME \"q\"'\n"
        'DOUBLE="a\\nb \\"q\\" c\\\\d \\t \\x"\n'
        "HASH=pass#word\n"
        "COMMENTED=value # note\n"
        "BLANK_COMMENT= # only a comment\n"
        'QUOTED_COMMENT="x # kept"  # dropped\n'
        "EQUALS=a=b=c\n"
        "REPEAT=1\n"
        "REPEAT=2\n"
        "export=not-a-prefix\n"
    )
    assert parse_dotenv(text) == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "trimmed value",
        "EMPTY": "",
        "SINGLE": 'lit \\n $HOME "q"',
        "DOUBLE": 'a\nb "q" c\\d \t \\x',
        "HASH": "pass#word",
        "COMMENTED": "value",
        "BLANK_COMMENT": "",
        "QUOTED_COMMENT": "x # kept",
        "EQUALS": "a=b=c",
        "REPEAT": "2",
        "export": "not-a-prefix",
    }


def test_dotenv_empty() -> None:
    assert parse_dotenv("") == {}
    assert parse_dotenv("# nothing\n\n   \n") == {}


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"OK=1\n{SECRET}\n", 2),  # no '='
        (f"OK=1\n\n# c\n1BAD={SECRET}\n", 4),  # bad key
        (f"A B={SECRET}\n", 1),
        (f"=={SECRET}\n", 1),
        (f'K="{SECRET}\n', 1),  # unterminated double quote
        (f"K='{SECRET}\n", 1),  # unterminated single quote
        (f'K="{SECRET}\\"\n', 1),  # the closing quote is escaped
        (f"K='a'{SECRET}\n", 1),  # text after the closing quote
        (f'OK=1\nK="a" {SECRET}\n', 2),
        (f"export {SECRET}\n", 1),
    ],
)
def test_dotenv_malformed_names_the_line_only(text: str, line: int) -> None:
    with pytest.raises(ApiError) as exc:
        parse_dotenv(text)
    assert exc.value.status == 400
    assert f"line {line}:" in exc.value.message
    assert_hidden(exc.value)


def test_dotenv_multiline_value_is_refused_without_echo() -> None:
    pem = f'KEY="-----BEGIN-----\n{SECRET}\n-----END-----"\n'
    with pytest.raises(ApiError, match="line 1:") as exc:
        parse_dotenv(pem)
    assert_hidden(exc.value)


def test_dotenv_feeds_the_store(store: SecretStore) -> None:
    items = parse_dotenv(f'API_KEY="{SECRET}"\nexport DB_URL=postgres://h/db\n')
    assert store.put_many("hello", items) == 1
    assert store.values("hello") == {"API_KEY": SECRET, "DB_URL": "postgres://h/db"}


env_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
simple_values = st.from_regex(r"[A-Za-z0-9_./:@+=-]{0,40}", fullmatch=True)
any_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40
)


def double_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r") + '"'


@given(st.dictionaries(env_keys, simple_values, max_size=10))
def test_dotenv_round_trip_unquoted(items: dict[str, str]) -> None:
    text = "".join(f"{k}={v}\n" for k, v in items.items())
    assert parse_dotenv(text) == items


@given(st.dictionaries(env_keys, any_values, max_size=10), st.booleans())
def test_dotenv_round_trip_double_quoted(items: dict[str, str], export: bool) -> None:
    prefix = "export " if export else ""
    text = "".join(f"{prefix}{k}={double_quote(v)}\n" for k, v in items.items())
    assert parse_dotenv(text) == items


@given(st.dictionaries(env_keys, any_values.filter(lambda v: "'" not in v and "\n" not in v)))
def test_dotenv_round_trip_single_quoted(items: dict[str, str]) -> None:
    text = "".join(f"{k}='{v}'\n" for k, v in items.items())
    assert parse_dotenv(text) == items
