import time


def handler(event, context):
    start = time.time()
    time.sleep(float(event.get("seconds", 0)))
    return {"start": start, "end": time.time()}
