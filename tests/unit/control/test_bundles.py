"""Bundle checks (validate_bundle), safe extraction (extract_bundle) and BundleStore."""

from __future__ import annotations

import contextlib
import io
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.control import bundles
from edgerun.control.bundles import (
    BundleError,
    BundleStore,
    extract_bundle,
    sha256_hex,
    validate_bundle,
)
from edgerun.errors import ApiError

REGULAR = stat.S_IFREG | 0o644


def make_bundle(
    files: dict[str, str | bytes], *, mode: int | None = REGULAR, deflate: bool = True
) -> bytes:
    """A zip whose entries carry ``mode`` (None: no unix mode at all)."""
    buf = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            if name.endswith("/"):
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
            elif mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def lying_bundle(real_size: int, claimed_size: int) -> bytes:
    """A one-entry zip whose headers claim ``claimed_size`` for a bigger entry."""
    data = bytearray(make_bundle({"big.bin": b"\0" * real_size}))
    struct.pack_into("<I", data, data.find(b"PK\x03\x04") + 22, claimed_size)
    struct.pack_into("<I", data, data.find(b"PK\x01\x02") + 24, claimed_size)
    return bytes(data)


def refused(data: bytes, **limits: int) -> BundleError:
    with pytest.raises(BundleError) as exc:
        validate_bundle(data, **limits)
    return exc.value


# --- validate_bundle: accepted ----------------------------------------------------


def test_valid_bundle_returns_its_entries():
    data = make_bundle({"handler.py": "def handler(e, c): ...", "lib/util.py": "X = 1"})

    infos = validate_bundle(data)

    assert [i.filename for i in infos] == ["handler.py", "lib/util.py"]


def test_directory_entries_are_accepted():
    data = make_bundle({"pkg/": b"", "pkg/__init__.py": b""})

    assert len(validate_bundle(data)) == 2


def test_entries_without_a_unix_mode_are_accepted():
    data = make_bundle({"handler.py": b"x"}, mode=None)

    assert len(validate_bundle(data)) == 1


def test_bundle_exactly_at_the_uncompressed_limit_is_accepted():
    data = make_bundle({"a.bin": b"\0" * 1000})

    assert len(validate_bundle(data, max_uncompressed=1000)) == 1


def test_entries_with_permission_bits_but_no_file_type_are_accepted():
    # ZipFile.writestr(name, data) records mode 0o600 with no S_IFREG bit.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("handler.py", "def handler(e, c): ...")

    assert len(validate_bundle(buf.getvalue())) == 1


# --- validate_bundle: refused -------------------------------------------------------


def test_bundle_error_is_a_400_api_error():
    err = refused(b"not a zip")

    assert isinstance(err, ApiError)
    assert err.status == 400
    assert err.type == "InvalidBundle"


def test_data_that_is_not_a_zip_is_refused():
    assert "not a valid zip" in refused(b"definitely not a zip file").message


def test_empty_zip_is_refused():
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()

    assert "empty" in refused(buf.getvalue()).message


def test_bundle_with_too_many_entries_is_refused():
    data = make_bundle({"a.py": "", "b.py": "", "c.py": ""})

    assert "more than the limit of 2" in refused(data, max_entries=2).message


@pytest.mark.parametrize("name", ["/etc/passwd", "C:/windows/evil.py"])
def test_absolute_path_entry_is_refused(name):
    assert "absolute path" in refused(make_bundle({name: "x"})).message


@pytest.mark.parametrize("name", ["../x", "a/../../x", "a/.."])
def test_dot_dot_entry_is_refused(name):
    assert "escapes the bundle" in refused(make_bundle({name: "x"})).message


def test_backslash_in_entry_path_is_refused():
    assert "backslash" in refused(make_bundle({"a\\..\\..\\x": "x"})).message


def test_symlink_entry_is_refused():
    data = make_bundle({"link": "/etc/passwd"}, mode=stat.S_IFLNK | 0o777)

    assert "symbolic link" in refused(data).message


def test_special_file_entry_is_refused():
    data = make_bundle({"fifo": ""}, mode=stat.S_IFIFO | 0o644)

    assert "not a regular file or folder" in refused(data).message


def test_entry_declaring_more_than_the_uncompressed_limit_is_refused_as_zip_bomb():
    data = make_bundle({"zeros.bin": b"\0" * 10_000})

    assert len(data) < 1000  # small on the wire, big on disk
    assert "zip bomb" in refused(data, max_uncompressed=1000).message


def test_entries_adding_up_past_the_uncompressed_limit_are_refused():
    data = make_bundle({"a.bin": b"\0" * 600, "b.bin": b"\0" * 600})

    assert "zip bomb" in refused(data, max_uncompressed=1000).message


# --- extract_bundle -----------------------------------------------------------------


def test_extract_writes_readable_files(tmp_path):
    data = make_bundle({"handler.py": "print('hi')", "pkg/": b"", "pkg/mod.py": b"X = 1"})
    dest = tmp_path / "code" / "abc"

    extract_bundle(data, dest, max_uncompressed=10_000)

    assert (dest / "handler.py").read_text() == "print('hi')"
    assert (dest / "pkg" / "mod.py").read_bytes() == b"X = 1"
    assert stat.S_IMODE((dest / "handler.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "pkg").stat().st_mode) == 0o755


def test_extract_leaves_no_temporary_folder_behind(tmp_path):
    extract_bundle(make_bundle({"a.py": "x"}), tmp_path / "dest", max_uncompressed=100)

    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


def test_extract_refuses_an_invalid_bundle_without_writing_anything(tmp_path):
    with pytest.raises(BundleError):
        extract_bundle(make_bundle({"../evil.py": "x"}), tmp_path / "dest", max_uncompressed=100)

    assert list(tmp_path.iterdir()) == []


def test_extract_refuses_a_header_declared_zip_bomb(tmp_path):
    with pytest.raises(BundleError, match="zip bomb"):
        extract_bundle(
            make_bundle({"z.bin": b"\0" * 10_000}), tmp_path / "d", max_uncompressed=1000
        )

    assert list(tmp_path.iterdir()) == []


def test_extract_stops_streaming_past_the_limit_and_cleans_up(tmp_path, monkeypatch):
    # Let the header check pass so only the byte count taken while writing can stop it.
    real_validate = bundles.validate_bundle
    monkeypatch.setattr(
        bundles, "validate_bundle", lambda data, **_: real_validate(data, max_uncompressed=1 << 30)
    )
    data = make_bundle({"a.bin": b"\0" * 600, "b.bin": b"\0" * 600})

    with pytest.raises(BundleError, match="while extracting"):
        extract_bundle(data, tmp_path / "dest", max_uncompressed=1000)

    assert list(tmp_path.iterdir()) == []


def test_extract_of_an_entry_lying_about_its_size_writes_nothing(tmp_path):
    data = lying_bundle(real_size=10_000, claimed_size=10)

    with pytest.raises(BundleError):
        extract_bundle(data, tmp_path / "dest", max_uncompressed=1000)

    assert list(tmp_path.iterdir()) == []


def test_extract_of_an_entry_lying_about_its_size_raises_bundle_error(tmp_path):
    data = lying_bundle(real_size=10_000, claimed_size=10)

    with pytest.raises(BundleError):
        extract_bundle(data, tmp_path / "dest", max_uncompressed=1000)


def test_extract_into_an_existing_folder_keeps_it(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "handler.py").write_text("old")

    extract_bundle(make_bundle({"handler.py": "new"}), dest, max_uncompressed=100)

    assert (dest / "handler.py").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]


# --- BundleStore --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    return BundleStore(tmp_path / "zips")


def test_put_returns_the_sha256_and_stores_under_it(store):
    data = make_bundle({"a.py": "x"})

    sha = store.put(data)

    assert sha == sha256_hex(data)
    assert store.path(sha) == store.root / sha[:2] / f"{sha}.zip"
    assert store.has(sha)
    assert store.get(sha) == data


def test_put_is_idempotent(store):
    data = make_bundle({"a.py": "x"})
    sha = store.put(data)

    assert store.put(data) == sha
    assert [p.name for p in store.path(sha).parent.iterdir()] == [f"{sha}.zip"]


def test_put_accepts_the_matching_expected_hash(store):
    data = make_bundle({"a.py": "x"})

    assert store.put(data, sha256_hex(data)) == sha256_hex(data)


def test_put_refuses_a_hash_mismatch_and_stores_nothing(store):
    data = make_bundle({"a.py": "x"})

    with pytest.raises(BundleError, match="hash mismatch"):
        store.put(data, "0" * 64)

    assert not store.has(sha256_hex(data))


def test_get_of_a_missing_bundle_returns_none(store):
    assert store.get("0" * 64) is None
    assert not store.has("0" * 64)


def test_delete_removes_the_bundle_and_ignores_missing_ones(store):
    sha = store.put(make_bundle({"a.py": "x"}))

    store.delete(sha)
    store.delete(sha)

    assert not store.has(sha)


@pytest.mark.parametrize("sha", ["abc", "A" * 64, "g" * 64, "0" * 63, "../" + "0" * 61])
def test_path_rejects_anything_but_a_lowercase_sha256_hex_digest(store, sha):
    with pytest.raises(ValueError):
        store.path(sha)


def test_path_rejects_a_digest_with_a_trailing_newline(store):
    with pytest.raises(ValueError):
        store.path("0" * 64 + "\n")


# --- bundles that no node could extract (issue 8, finding 18) ------------------------


def entries_zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip with exactly these entries, repeats and all."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name" is the point
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def patched(data: bytes, local_offset: int, central_offset: int, value: int) -> bytes:
    """Set a 2-byte field of the first entry's local and central headers."""
    out = bytearray(data)
    struct.pack_into("<H", out, out.find(b"PK\x03\x04") + local_offset, value)
    struct.pack_into("<H", out, out.find(b"PK\x01\x02") + central_offset, value)
    return bytes(out)


GOOD = make_bundle({"main.py": "def handler(e, c):\n    return 1\n"})


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (entries_zip([("a", b"x"), ("a/b", b"y")]), "both a file and a folder"),
        (entries_zip([("a/b", b"y"), ("a", b"x")]), "both a file and a folder"),
        (entries_zip([("a/", b""), ("a", b"x")]), "both a file and a folder"),
        (entries_zip([("a", b"x"), ("a/", b"")]), "both a file and a folder"),
        (entries_zip([("main.py", b"1"), ("main.py", b"2")]), "more than one entry"),
        (entries_zip([("m.py", b"1"), ("./m.py", b"2")]), "more than one entry"),
        (entries_zip([("x" * 300 + ".py", b"x")]), "component longer than 255"),
        (entries_zip([("d/" * 4000 + "f.py", b"x")]), "deeper than"),
        (patched(GOOD, 8, 10, 99), "compression method 99"),
        (patched(GOOD, 4, 6, 99), "zip file version"),
        (patched(GOOD, 6, 8, 1), "encrypted"),
    ],
    ids=[
        "file-then-folder",
        "folder-then-file",
        "dir-entry-then-file",
        "file-then-dir-entry",
        "duplicate",
        "duplicate-after-normalising",
        "long-component",
        "deep-path",
        "unsupported-method",
        "future-zip-version",
        "encrypted",
    ],
)
def test_bundles_no_node_could_extract_are_refused_and_never_extracted(
    data: bytes, why: str, tmp_path: Path
) -> None:
    assert why in refused(data).message
    with pytest.raises(BundleError):  # the node's extraction runs the same checks
        extract_bundle(data, tmp_path / "dest", max_uncompressed=1 << 20)
    assert not (tmp_path / "dest").exists()


def test_verify_reads_every_entry_at_upload() -> None:
    data = bytearray(make_bundle({"main.py": b"x = 1\n" * 100}))
    data[data.find(b"PK\x03\x04") + 30 + len("main.py") + 2] ^= 0xFF  # corrupt the deflate data
    validate_bundle(bytes(data))  # the headers alone look fine
    with pytest.raises(BundleError, match="corrupt"):
        bundles.verify_bundle(bytes(data), max_uncompressed=1 << 20)
    bundles.verify_bundle(GOOD, max_uncompressed=1 << 20)


def test_repeated_folder_entries_and_nested_files_are_fine() -> None:
    data = entries_zip([("pkg/", b""), ("pkg/", b""), ("pkg/a.py", b"1"), ("pkg/sub/b.py", b"2")])
    assert len(validate_bundle(data)) == 4


# --- corrupt entries are a BundleError, never another exception (a 500) -----------


def _corrupt_local_offset(data: bytes) -> bytes:
    """Make the end record claim a later central directory, so zipfile puts the
    entries' local headers before the start of the file (a negative seek)."""
    out = bytearray(data)
    end = out.rfind(b"PK\x05\x06")
    (offset,) = struct.unpack_from("<I", out, end + 16)
    struct.pack_into("<I", out, end + 16, offset + 1000)
    return bytes(out)


def _corrupt_bzip2(data_len: int = 2000) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("main.py", bytes(range(256)) * (data_len // 256))
    out = bytearray(buf.getvalue())
    start = out.find(b"PK\x03\x04") + 30 + len("main.py")
    out[start + 10 : start + 40] = b"\xa5" * 30  # the bzip2 stream, past its "BZh9" header
    return bytes(out)


def _bad_local_name() -> bytes:
    """The local header's name is not UTF-8 although its flags say it is."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("main\u00e9.py", b"x = 1\n")
    out = bytearray(buf.getvalue())
    name_at = out.find(b"PK\x03\x04") + 30
    out[name_at + 4 : name_at + 6] = b"\xff\xfe"
    return bytes(out)


@pytest.mark.parametrize(
    "data",
    [_corrupt_local_offset(GOOD), _corrupt_bzip2(), _bad_local_name()],
    ids=["negative-seek", "corrupt-bzip2", "bad-local-name"],
)
def test_corrupt_entries_are_bundle_errors_at_upload_and_extraction(
    data: bytes, tmp_path: Path
) -> None:
    with pytest.raises(BundleError):
        bundles.verify_bundle(data, max_uncompressed=1 << 20)
    with pytest.raises(BundleError):
        extract_bundle(data, tmp_path / "dest", max_uncompressed=1 << 20)
    assert not (tmp_path / "dest").exists()


FUZZ_BASE = make_bundle({"main.py": "def handler(e, c):\n    return 1\n", "pkg/": ""})


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(FUZZ_BASE) - 1), st.integers(1, 255)), max_size=4))
def test_flipped_bytes_give_a_bundle_error_or_a_valid_bundle(flips: list[tuple[int, int]]) -> None:
    data = bytearray(FUZZ_BASE)
    for at, mask in flips:
        data[at] ^= mask
    with contextlib.suppress(BundleError):
        bundles.verify_bundle(bytes(data), max_uncompressed=1 << 20)
