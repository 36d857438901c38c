"""The node's own log lines."""

from __future__ import annotations

import json
import logging

from edgerun.logconfig import JsonFormatter, TextFormatter, invocation


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",)) -> logging.LogRecord:
    return logging.LogRecord("edgerun.node", logging.WARNING, __file__, 1, msg, args, None)


def test_a_json_line_has_time_level_node_and_message() -> None:
    line = json.loads(JsonFormatter("pop-1").format(record()))
    assert line["level"] == "warning" and line["node"] == "pop-1"
    assert line["msg"] == "hello world" and line["ts"].endswith("Z")
    assert "request_id" not in line


def test_a_line_written_during_an_invocation_names_it() -> None:
    token = invocation.set(("req-1", "echo"))
    try:
        line = json.loads(JsonFormatter("pop-1").format(record()))
        text = TextFormatter("pop-1").format(record())
    finally:
        invocation.reset(token)
    assert (line["request_id"], line["function"]) == ("req-1", "echo")
    assert "[echo req-1]" in text


def test_a_message_that_looks_like_json_stays_one_line() -> None:
    out = JsonFormatter("pop-1").format(record('evil\n{"level": "error"}', ()))
    assert "\n" not in out
    assert json.loads(out)["level"] == "warning"
