"""A node's TLS files are checked at start-up, with one clear line per mistake."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.pki import issue_server, make_ca

from edgerun.config import TlsConfig
from edgerun.tls import client_verify, server_kwargs


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("test CA")
    ca_pem, _ = ca.write(folder, "ca")
    server = issue_server(ca)
    cert, key = server.write(folder, "server")
    _, other_key = issue_server(ca).write(folder, "other")
    encrypted = folder / "encrypted.key"
    encrypted.write_bytes(
        server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    garbage = folder / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {
        "ca": ca_pem,
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "encrypted": encrypted,
        "garbage": garbage,
        "missing": folder / "missing.pem",
    }


def test_no_cert_serves_plain_http() -> None:
    assert server_kwargs(TlsConfig()) == {}
    assert server_kwargs(TlsConfig(ca="ignored-here.pem")) == {}


def test_a_cert_and_its_key_become_uvicorns_arguments(files: dict[str, Path]) -> None:
    tls = TlsConfig(cert=str(files["cert"]), key=str(files["key"]))
    assert server_kwargs(tls) == {
        "ssl_certfile": str(files["cert"]),
        "ssl_keyfile": str(files["key"]),
    }


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("missing", "key", "cannot read .*missing.pem"),
        ("cert", "missing", "cannot read .*missing.pem"),
        ("cert", "other_key", "not a PEM certificate and its private key"),
        ("garbage", "key", "not a PEM certificate and its private key"),
        ("cert", "encrypted", "the key is encrypted"),
    ],
)
def test_bad_server_files_are_a_clear_error(
    files: dict[str, Path], cert: str, key: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        server_kwargs(TlsConfig(cert=str(files[cert]), key=str(files[key])))


def test_half_a_pair_set_after_the_config_was_built_is_refused_too() -> None:
    tls = TlsConfig(cert="node.pem", key="node.key")
    tls.key = ""  # structs are mutable; only building one runs its check
    with pytest.raises(ValueError, match="cert and key must be set together"):
        server_kwargs(tls)


def test_the_client_verifies_with_the_ca_or_the_system_roots(files: dict[str, Path]) -> None:
    own = client_verify(TlsConfig(ca=str(files["ca"])))
    assert own.verify_mode == ssl.CERT_REQUIRED and own.check_hostname
    assert [c["subject"] for c in own.get_ca_certs()] == [((("commonName", "test CA"),),)]
    system = client_verify(TlsConfig())
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname


@pytest.mark.parametrize(
    ("ca", "message"), [("missing", "cannot read ca"), ("garbage", "holds no PEM certificate")]
)
def test_a_bad_ca_is_a_clear_error(files: dict[str, Path], ca: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_verify(TlsConfig(ca=str(files[ca])))
