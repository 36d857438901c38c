"""Well-behaved neighbour: answers with its event, to show the node still serves."""

import os


def handler(event, context):
    return {"event": event, "pid": os.getpid()}
