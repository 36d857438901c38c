import time


def handler(event, context):
    """Takes a while (event["sleep_s"]) and fails when asked to: for queue tests."""
    time.sleep(float(event.get("sleep_s", 0)))
    if event.get("fail"):
        raise RuntimeError(f"failing as asked: {event.get('n')}")
    print(f"ran {event.get('n')}")
    return {"n": event.get("n")}
