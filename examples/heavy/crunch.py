"""A function that declares it belongs in a region (placement = "region")."""

import hashlib


def handler(event, context):
    rounds = int(event.get("rounds", 20000))
    digest = b"edgerun"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return {"rounds": rounds, "digest": digest.hex()}
