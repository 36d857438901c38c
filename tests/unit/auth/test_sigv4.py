"""SigV4 checking against what botocore itself signs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edgerun.auth import sigv4

SECRET = "s3cr3t-of-the-key"
URL = "http://127.0.0.1:8720/2015-03-31/functions/acme.resize/invocations?Qualifier=prod"


def signed(
    body: bytes = b'{"a": 1}', url: str = URL, service: str = "lambda", secret: str = SECRET
) -> tuple[list[tuple[str, str]], str, str, bytes]:
    req = AWSRequest(method="POST", url=url, data=body, headers={"X-Amz-Log-Type": "Tail"})
    SigV4Auth(Credentials("k_abc", secret), service, "eu-west-1").add_auth(req)
    parts = urlsplit(url)
    headers = [(k.lower(), v) for k, v in req.headers.items()] + [("host", parts.netloc)]
    return headers, parts.path, parts.query, body


def check(
    headers: list[tuple[str, str]], path: str, query: str, body: bytes, *, secret: str = SECRET
) -> None:
    cred = sigv4.parse(headers, datetime.now(UTC))
    key = sigv4.signing_key(secret, cred.date, cred.region)
    sigv4.verify(cred, key, method="POST", raw_path=path, query=query, headers=headers, body=body)


def test_a_botocore_signature_verifies() -> None:
    check(*signed())


def test_a_path_with_escapes_verifies() -> None:
    check(*signed(url="http://h:1/2015-03-31/functions/a%24b/invocations?Qualifier=%24LATEST"))


def test_the_credential_names_key_region_and_date() -> None:
    headers, *_ = signed()
    cred = sigv4.parse(headers, datetime.now(UTC))
    assert (cred.key_id, cred.region, cred.service) == ("k_abc", "eu-west-1", "lambda")


def test_another_secret_does_not_verify() -> None:
    with pytest.raises(sigv4.SigV4Error, match="does not match"):
        check(*signed(), secret="another")


def test_a_changed_body_does_not_verify() -> None:
    headers, path, query, _ = signed()
    with pytest.raises(sigv4.SigV4Error):
        check(headers, path, query, b'{"a": 2}')


def test_a_changed_query_does_not_verify() -> None:
    headers, path, _, body = signed()
    with pytest.raises(sigv4.SigV4Error):
        check(headers, path, "Qualifier=dev", body)


def test_a_changed_signed_header_does_not_verify() -> None:
    headers, path, query, body = signed()
    headers = [(k, "None" if k == "x-amz-log-type" else v) for k, v in headers]
    with pytest.raises(sigv4.SigV4Error):
        check(headers, path, query, body)


def test_a_signature_from_more_than_15_minutes_away_is_refused() -> None:
    headers, *_ = signed()
    with pytest.raises(sigv4.SigV4Error, match="15 minutes"):
        sigv4.parse(headers, datetime.now(UTC) + timedelta(minutes=16))


def test_another_services_signature_is_refused() -> None:
    headers, *_ = signed(service="s3")
    with pytest.raises(sigv4.SigV4Error, match="scoped to 's3'"):
        sigv4.parse(headers, datetime.now(UTC))


def test_two_authorization_headers_are_refused() -> None:
    headers, *_ = signed()
    auth = next(v for k, v in headers if k == "authorization")
    with pytest.raises(sigv4.SigV4Error, match="more than one"):
        sigv4.parse([*headers, ("authorization", auth)], datetime.now(UTC))


@pytest.mark.parametrize(
    "auth",
    [
        "AWS4-HMAC-SHA256 Credential=garbage",
        "AWS4-HMAC-SHA256 Credential=k/20260101/r/lambda/aws4_request, SignedHeaders=x-amz-date,"
        " Signature=" + "0" * 64,  # host not signed
        "AWS4-HMAC-SHA256 Credential=k/20260101/r/lambda/aws4_request, "
        "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64,  # not sorted
    ],
)
def test_malformed_authorization_is_refused(auth: str) -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    headers = [("authorization", auth), ("x-amz-date", "20260101T120000Z"), ("host", "h")]
    with pytest.raises(sigv4.SigV4Error):
        sigv4.parse(headers, now)


def test_a_content_hash_header_that_lies_is_refused() -> None:
    headers, path, query, body = signed()
    headers.append(("x-amz-content-sha256", "0" * 64))
    with pytest.raises(sigv4.SigV4Error, match="body's hash"):
        sigv4.canonical_request("POST", path, query, headers, ["host"], body)
