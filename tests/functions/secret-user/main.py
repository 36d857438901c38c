import hashlib
import os


def handler(event, context):
    value = os.environ.get("DB_URL")
    digest = hashlib.sha256(value.encode()).hexdigest() if value is not None else None
    return {"db_url_sha256": digest, "fn": context.function_name}
