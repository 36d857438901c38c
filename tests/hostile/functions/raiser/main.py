"""Attacks error handling: raises an ordinary exception."""


def handler(event, context):
    raise ValueError("hostile: deliberate failure")
