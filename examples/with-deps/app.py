"""Uses a vendored dependency from requirements.txt (bundled by `edgerun deploy`)."""

import six


def handler(event, context):
    return {"six_version": six.__version__, "py3": six.PY3, "echo": event.get("echo")}
