"""Attacks the sandbox process: exits it at once with os._exit(9)."""

import os


def handler(event, context):
    os._exit(9)
