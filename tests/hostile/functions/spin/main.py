"""Attacks the timeout: loops forever."""


def handler(event, context):
    while True:
        pass
