"""functions-framework peers: hello and JSON-transform (bench/peers).

Default mode (Flask under gunicorn): ``functions-framework --target hello``.
ASGI mode (Starlette under gunicorn's uvicorn worker): ``--asgi --target hello_async``;
the async functions get a Starlette request, so they have their own entry points.
"""

import json

import functions_framework


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


def _hello_body(name):
    return json.dumps({"message": f"hello, {name}!"})


@functions_framework.http
def hello(request):
    name = request.args.get("name", "world")
    return _hello_body(name), 200, {"content-type": "application/json"}


@functions_framework.http
def transform(request):
    order = request.get_json(force=True)
    return json.dumps(reshape(order)), 200, {"content-type": "application/json"}


async def hello_async(request):
    from starlette.responses import Response

    name = request.query_params.get("name", "world")
    return Response(_hello_body(name), media_type="application/json")


async def transform_async(request):
    from starlette.responses import Response

    order = json.loads(await request.body())
    return Response(json.dumps(reshape(order)), media_type="application/json")
