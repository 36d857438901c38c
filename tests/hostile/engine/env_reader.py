import os


def handler(event, context):
    return {"length": len(os.environ.get(event["name"], ""))}
