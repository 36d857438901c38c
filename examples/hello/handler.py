"""A Lambda-style HTTP handler: runs unchanged on AWS Lambda function URLs."""

import json


def handler(event, context):
    params = event.get("queryStringParameters") or {}
    name = params.get("name", "world")
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"message": f"hello, {name}!", "request_id": context.aws_request_id}),
    }
