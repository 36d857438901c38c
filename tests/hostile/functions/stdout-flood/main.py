"""Attacks log capture: prints 1 GB to stdout."""


def handler(event, context):
    line = "x" * (1024 * 1024 - 1)
    written = 0
    for _ in range(event.get("mb", 1024)):
        print(line)
        written += len(line) + 1
    return {"written": written}
