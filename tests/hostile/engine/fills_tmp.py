import os


def handler(event, context):
    with open(f"/tmp/fill-{os.getpid()}", "wb") as f:
        for _ in range(event["mb"]):
            f.write(b"x" * (1 << 20))
    return {"written_mb": event["mb"]}
