"""Reshape an order: works as a direct invoke (payload = event) or over HTTP."""

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
    if event.get("version") == "2.0" and "requestContext" in event:
        body = json.loads(event.get("body") or "{}")
        return {"statusCode": 200, "body": json.dumps(reshape(body))}
    return reshape(event)
