"""Attacks the interpreter: reads address 0 through ctypes (SIGSEGV)."""

import ctypes


def handler(event, context):
    return ctypes.string_at(0)
