"""AWS Signature Version 4, as the Lambda Invoke API's clients (boto3, the aws CLI)
sign requests: the check, with no I/O.

The access key id is an edgerun key id and the secret is that key's secret. The
control plane keeps secrets sealed (never in the clear on disk) and gives a
node only the day's *signing key* for a key, date, region and service (what AWS
calls kSigning): it verifies that day's signatures and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "lambda"
MAX_SKEW_S = 15 * 60
_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<key>[A-Za-z0-9_.-]{1,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})"
    r"/(?P<service>[a-z0-9-]{1,32})/aws4_request,\s*"
    r"SignedHeaders=(?P<headers>[a-z0-9-]+(?:;[a-z0-9-]+)*),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})"
)
_AMZ_DATE_RE = re.compile(r"\d{8}T\d{6}Z")
_SPACES = re.compile(r"\s+")


class SigV4Error(Exception):
    """Why a signed request is refused (its message is safe to show the caller)."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What the ``Authorization`` header claims, before the signature is checked."""

    key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str


def is_sigv4(authorization: str | None) -> bool:
    return authorization is not None and authorization.startswith(ALGORITHM + " ")


def parse(headers: Sequence[tuple[str, str]], now: datetime) -> Credential:
    """The credential a request claims; refused when malformed, for another service,
    outside the clock skew, or not signing ``host`` and ``x-amz-date``."""
    auth = _one(headers, "authorization")
    m = _AUTH_RE.fullmatch(auth.strip()) if auth else None
    if m is None:
        raise SigV4Error("the Authorization header is not a well-formed AWS4-HMAC-SHA256 one")
    if m["service"] != SERVICE:
        raise SigV4Error(f"the credential is scoped to {m['service']!r}, not {SERVICE!r}")
    amz_date = _one(headers, "x-amz-date") or ""
    if not _AMZ_DATE_RE.fullmatch(amz_date):
        raise SigV4Error("X-Amz-Date is missing or not YYYYMMDDTHHMMSSZ")
    if amz_date[:8] != m["date"]:
        raise SigV4Error("the credential's date is not X-Amz-Date's")
    when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if abs((now - when).total_seconds()) > MAX_SKEW_S:
        raise SigV4Error("the signature is more than 15 minutes away from the server's clock")
    signed = tuple(m["headers"].split(";"))
    if "host" not in signed or "x-amz-date" not in signed:
        raise SigV4Error("host and x-amz-date must be signed")
    if list(signed) != sorted(set(signed)):
        raise SigV4Error("SignedHeaders must be sorted and unique")
    unsigned = sorted({k for k, _ in headers if k.startswith("x-amz-")} - set(signed))
    if unsigned:  # they change what the call does: a replayed request may not add them
        raise SigV4Error(f"these headers must be signed: {', '.join(unsigned)}")
    return Credential(
        key_id=m["key"],
        date=m["date"],
        region=m["region"],
        service=m["service"],
        signed_headers=signed,
        signature=m["signature"],
        amz_date=amz_date,
    )


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning: what the control plane hands a node for one key, day and region."""
    k = _hmac(("AWS4" + secret).encode(), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def verify(
    cred: Credential,
    key: bytes,
    *,
    method: str,
    raw_path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
) -> None:
    """Raise unless ``cred.signature`` signs this request under ``key`` (kSigning)."""
    canonical = canonical_request(method, raw_path, query, headers, cred.signed_headers, body)
    scope = f"{cred.date}/{cred.region}/{cred.service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, cred.amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, cred.signature):
        raise SigV4Error(
            "the request signature does not match: check the secret access key and the "
            "endpoint's region"
        )


def canonical_request(
    method: str,
    raw_path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    body: bytes,
) -> str:
    """AWS's canonical form of a request (non-S3 rules: the path as sent, encoded
    once more; query pairs sorted and encoded; signed headers trimmed)."""
    path = quote(raw_path or "/", safe="/~")
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(query, keep_blank_values=True)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    values: dict[str, list[str]] = {}
    for k, v in headers:
        if k in signed_headers:
            values.setdefault(k, []).append(_SPACES.sub(" ", v.strip()))
    missing = [h for h in signed_headers if h not in values]
    if missing:
        raise SigV4Error(f"signed header(s) missing from the request: {', '.join(missing)}")
    canonical_headers = "".join(f"{h}:{','.join(values[h])}\n" for h in signed_headers)
    payload = _one(headers, "x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
    if payload != hashlib.sha256(body).hexdigest():
        raise SigV4Error("X-Amz-Content-SHA256 is not the body's hash")
    return "\n".join(
        [method, path, canonical_query, canonical_headers, ";".join(signed_headers), payload]
    )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _one(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    found = [v for k, v in headers if k == name]
    if len(found) > 1:
        raise SigV4Error(f"more than one {name} header")
    return found[0] if found else None
