def _inner(value):
    raise ValueError(f"bad value: {value}")


def handler(event, context):
    return _inner(event.get("value"))
