"""JSON-transform for bench/peers: reshape the order POSTed as the request body."""

import base64
import json


def reshape(order):
    items = order.get("items", [])
    total = sum(i.get("price", 0) * i.get("qty", 1) for i in items)
    return {
        "id": order.get("id"),
        "customer": str(order.get("customer", "")).strip().title(),
        "count": sum(i.get("qty", 1) for i in items),
        "total": round(total, 2),
        "skus": sorted(i.get("sku", "") for i in items),
    }


def handler(event, context):
    body = event.get("body") or "{}"
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body)
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(reshape(json.loads(body))),
    }
