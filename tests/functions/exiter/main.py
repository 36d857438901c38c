import os


def handler(event, context):
    os._exit(7)
