import os
import threading
import time


def _later():
    time.sleep(0.3)
    if os.fork() == 0:
        os.setsid()
        while True:
            pass


def handler(event, context):
    threading.Thread(target=_later, daemon=True).start()
    return {"scheduled": True}
