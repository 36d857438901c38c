import os


def handler(event, context):
    return {"event": event, "env": os.environ.get("GREETING"), "fn": context.function_name}
