"""Well-behaved victim: its bundle holds a secret other functions must not read."""

import os


def handler(event, context):
    with open(os.path.join(os.path.dirname(__file__), "victim_secret.txt")) as f:
        return {"secret": f.read().strip()}
