"""Attacks the node's network: opens a TCP connection to a loopback service."""

import socket


def handler(event, context):
    try:
        with socket.create_connection((event["host"], event["port"]), timeout=1.0) as s:
            s.sendall(b"GET /v1/health HTTP/1.0\r\nHost: x\r\n\r\n")
            first_line = s.recv(200).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as exc:
        return {"denied": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"denied": False, "status_line": first_line}
