"""Attacks the worker loop: tries to end the interpreter with sys.exit(3)."""

import sys


def handler(event, context):
    sys.exit(3)
