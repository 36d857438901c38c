"""The node's checks of sandbox replies: pure functions over forged frames."""

import pytest

from edgerun.sandbox.protocol import ErrorInfo, Failure, Result
from edgerun.sandbox.replies import LOG_LIMIT, InvalidResponse, check_failure, check_result


def result(
    status: int = 200, headers: list[tuple[str, str]] | None = None, logs: str = ""
) -> Result:
    return Result(id="r", status=status, headers=headers or [], body=b"", logs=logs)


@pytest.mark.parametrize("status", [0, 42, 101, 199, 600, 1000, 2**40])
def test_status_outside_200_to_599_is_refused(status: int) -> None:
    with pytest.raises(InvalidResponse) as exc:
        check_result(result(status))
    assert exc.value.status == 502


@pytest.mark.parametrize(
    "header",
    [
        ("x-a", "1\r\nx-b: 2"),
        ("x-a", "1\n"),
        ("x-a", "nul\x00"),
        ("x-a\r\n", "1"),
        ("", "1"),
        ("x a", "1"),
        ("x-a", "€"),
        ("x-big", "v" * 9000),
    ],
)
def test_headers_no_http_answer_can_carry_are_refused(header: tuple[str, str]) -> None:
    with pytest.raises(InvalidResponse):
        check_result(result(headers=[header]))


def test_names_are_lower_cased_and_framing_and_our_own_headers_dropped() -> None:
    checked = check_result(
        result(
            headers=[
                ("Content-Length", "5"),
                ("TRANSFER-ENCODING", "chunked"),
                ("X-Edgerun-Node", "forged"),
                ("Set-Cookie", "a=1"),
                ("set-cookie", "b=2"),
            ]
        )
    )
    assert checked.headers == [("set-cookie", "a=1"), ("set-cookie", "b=2")]


def test_latin_1_and_tabs_in_values_are_kept() -> None:
    assert check_result(result(headers=[("x-a", "caf\xe9\tb")])).headers == [("x-a", "caf\xe9\tb")]


def test_output_is_capped_on_the_node() -> None:
    checked = check_result(result(logs="x" * (LOG_LIMIT * 4)))
    assert LOG_LIMIT < len(checked.logs) < LOG_LIMIT + 100


def test_failure_text_is_cut_to_a_readable_size() -> None:
    failure = Failure(
        id="r",
        error=ErrorInfo(type="T" * 1000, message="m" * 100_000, traceback=["l"] * 10_000),
        logs="x" * (LOG_LIMIT * 2),
    )
    checked = check_failure(failure)
    assert len(checked.error.type) <= 131
    assert len(checked.error.message) <= 4099
    assert len(checked.error.traceback) == 100
    assert len(checked.logs) < LOG_LIMIT + 100
