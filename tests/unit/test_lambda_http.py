"""The Lambda function-URL contract: build_event (payload 2.0) and to_http_response."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from edgerun.lambda_http import ResponseError, build_event, to_http_response


def event(
    *,
    method: str = "GET",
    path: str = "/",
    query_string: str = "",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    **kw: Any,
) -> dict[str, Any]:
    return build_event(
        method=method,
        path=path,
        query_string=query_string,
        headers=headers or [],
        body=body,
        source_ip=kw.pop("source_ip", "203.0.113.7"),
        request_id=kw.pop("request_id", "req-1"),
        domain=kw.pop("domain", "hello.edge.example"),
        now=kw.pop("now", 0.0),
    )


# --- build_event --------------------------------------------------------------------


def test_event_is_payload_format_2_0():
    ev = event(path="/items/1", query_string="a=1")

    assert ev["version"] == "2.0"
    assert ev["routeKey"] == "$default"
    assert ev["rawPath"] == "/items/1"
    assert ev["rawQueryString"] == "a=1"


def test_request_context_describes_the_http_request():
    ev = event(method="POST", path="/p", headers=[("User-Agent", "curl/8")], now=1.5)

    ctx = ev["requestContext"]
    assert ctx["http"] == {
        "method": "POST",
        "path": "/p",
        "protocol": "HTTP/1.1",
        "sourceIp": "203.0.113.7",
        "userAgent": "curl/8",
    }
    assert ctx["requestId"] == "req-1"
    assert ctx["domainName"] == "hello.edge.example"
    assert ctx["domainPrefix"] == "hello"
    assert ctx["timeEpoch"] == 1500
    assert ctx["time"] == "01/Jan/1970:00:00:01 +0000"


def test_header_names_are_lowercased():
    ev = event(headers=[("X-Custom-Thing", "v")])

    assert ev["headers"] == {"x-custom-thing": "v"}


def test_duplicate_headers_are_comma_joined_in_order():
    ev = event(headers=[("Accept", "text/html"), ("accept", "application/json")])

    assert ev["headers"]["accept"] == "text/html,application/json"


def test_cookies_are_split_out_of_the_headers():
    ev = event(headers=[("Cookie", "a=1; b=2"), ("cookie", "c=3;"), ("Host", "h")])

    assert ev["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in ev["headers"]


def test_no_cookies_key_without_cookies():
    assert "cookies" not in event()


def test_repeated_query_keys_are_comma_joined():
    ev = event(query_string="tag=a&tag=b&page=2")

    assert ev["queryStringParameters"] == {"tag": "a,b", "page": "2"}


def test_query_values_are_percent_decoded_and_blanks_kept():
    ev = event(query_string="q=hello%20world&empty=")

    assert ev["queryStringParameters"] == {"q": "hello world", "empty": ""}
    assert ev["rawQueryString"] == "q=hello%20world&empty="


def test_no_query_string_parameters_key_without_a_query():
    assert "queryStringParameters" not in event()


def test_empty_body_is_omitted_and_not_base64():
    ev = event()

    assert "body" not in ev
    assert ev["isBase64Encoded"] is False


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/json", "application/x-www-form-urlencoded", None],
)
def test_utf8_text_body_is_passed_as_text(content_type):
    headers = [("Content-Type", content_type)] if content_type else []

    ev = event(method="POST", headers=headers, body='{"café": 1}'.encode())

    assert ev["body"] == '{"café": 1}'
    assert ev["isBase64Encoded"] is False


def test_binary_body_is_base64_encoded():
    raw = bytes(range(256))

    ev = event(method="POST", headers=[("Content-Type", "image/png")], body=raw)

    assert ev["isBase64Encoded"] is True
    assert base64.b64decode(ev["body"]) == raw


def test_utf8_body_with_a_binary_content_type_is_base64_encoded():
    ev = event(method="POST", headers=[("Content-Type", "application/octet-stream")], body=b"hi")

    assert ev["isBase64Encoded"] is True
    assert ev["body"] == base64.b64encode(b"hi").decode()


def test_non_utf8_body_without_content_type_is_base64_encoded():
    ev = event(method="POST", body=b"\xff\xfe")

    assert ev["isBase64Encoded"] is True
    assert base64.b64decode(ev["body"]) == b"\xff\xfe"


def test_non_utf8_body_with_a_text_content_type_survives_the_round_trip():
    raw = "café".encode("latin-1")

    ev = event(method="POST", headers=[("Content-Type", "text/plain; charset=latin-1")], body=raw)

    sent = base64.b64decode(ev["body"]) if ev["isBase64Encoded"] else ev["body"].encode()
    assert sent == raw


# --- to_http_response: explicit responses -------------------------------------------


def test_explicit_response_uses_status_headers_and_body():
    status, headers, body = to_http_response(
        {"statusCode": 201, "headers": {"Content-Type": "text/csv", "X-Id": 7}, "body": "a,b"}
    )

    assert status == 201
    assert headers == [("content-type", "text/csv"), ("x-id", "7")]
    assert body == b"a,b"


def test_explicit_base64_body_is_decoded():
    raw = b"\x00\x01\xff"

    _, _, body = to_http_response(
        {"statusCode": 200, "body": base64.b64encode(raw).decode(), "isBase64Encoded": True}
    )

    assert body == raw


def test_invalid_base64_body_is_a_response_error():
    with pytest.raises(ResponseError, match="not valid base64"):
        to_http_response({"statusCode": 200, "body": "%%%", "isBase64Encoded": True})


def test_cookies_become_set_cookie_headers():
    _, headers, _ = to_http_response({"statusCode": 200, "cookies": ["a=1; Path=/", "b=2"]})

    assert [v for k, v in headers if k == "set-cookie"] == ["a=1; Path=/", "b=2"]


def test_explicit_response_without_body_is_empty_text():
    assert to_http_response({"statusCode": 204}) == (
        204,
        [("content-type", "text/plain; charset=utf-8")],
        b"",
    )


def test_explicit_body_that_looks_like_json_gets_a_json_content_type():
    _, headers, _ = to_http_response({"statusCode": 200, "body": '{"ok": true}'})

    assert headers == [("content-type", "application/json")]


def test_explicit_non_string_body_is_json_encoded():
    _, headers, body = to_http_response({"statusCode": 200, "body": {"ok": True}})

    assert body == b'{"ok":true}'
    assert headers == [("content-type", "application/json")]


@pytest.mark.parametrize("status", [99, 600, "200", 200.0, True, None])
def test_invalid_status_code_is_a_response_error(status):
    with pytest.raises(ResponseError, match="statusCode"):
        to_http_response({"statusCode": status})


def test_headers_that_are_not_an_object_are_a_response_error():
    with pytest.raises(ResponseError, match="headers"):
        to_http_response({"statusCode": 200, "headers": [("a", "b")]})


# --- to_http_response: implicit responses -------------------------------------------


def test_string_is_a_plain_text_200():
    assert to_http_response("héllo") == (
        200,
        [("content-type", "text/plain; charset=utf-8")],
        "héllo".encode(),
    )


def test_bytes_are_an_octet_stream_200():
    assert to_http_response(b"\x00\x01") == (
        200,
        [("content-type", "application/octet-stream")],
        b"\x00\x01",
    )


@pytest.mark.parametrize(
    ("value", "encoded"),
    [({"message": "hi"}, b'{"message":"hi"}'), ([1, 2], b"[1,2]"), (42, b"42"), (None, b"null")],
)
def test_other_values_are_a_json_200(value, encoded):
    assert to_http_response(value) == (200, [("content-type", "application/json")], encoded)


@pytest.mark.parametrize("value", [object(), {"nested": object()}])
def test_value_that_is_not_json_serialisable_is_a_response_error(value):
    with pytest.raises(ResponseError, match="not JSON-serialisable"):
        to_http_response(value)


def test_explicit_body_that_is_not_json_serialisable_is_a_response_error():
    with pytest.raises(ResponseError):
        to_http_response({"statusCode": 200, "body": {"x": object()}})
