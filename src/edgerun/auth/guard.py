"""One guard for every API route: each route declares what it needs, and the
route table cannot hold a route that does not (see :func:`route`).

The guard authenticates the key (401 without a live one) and enforces the
coarse need; handlers that act on one function then ask
:meth:`Principal.check` for the fine-grained scope (403, or 404 outside the
caller's tenant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgerun.auth.keys import Keyring
from edgerun.auth.scopes import Principal
from edgerun.errors import forbidden, unauthorized

Endpoint = Callable[[Request], Awaitable[Response]]


class Need(StrEnum):
    PUBLIC = "public"
    """Anyone (a key, if sent, must still be valid)."""
    KEY = "key"
    """Any live key; the handler checks the scope for the function it touches."""
    NODE = "node"
    """A node credential (or the cluster admin)."""
    CLUSTER_ADMIN = "cluster-admin"
    """An admin key of the default tenant."""


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    need: Need
    endpoint: Endpoint


def principal_of(request: Request) -> Principal:
    """The verified caller of a guarded route."""
    principal: Principal = request.state.principal
    return principal


def optional_principal(request: Request) -> Principal | None:
    return getattr(request.state, "principal", None)


def route(api: ApiRoute, keyring: Callable[[], Keyring]) -> Route:
    """A Starlette route whose endpoint runs only once ``api.need`` is met."""
    need, endpoint = api.need, api.endpoint

    async def guarded(request: Request) -> Response:
        principal = keyring().authenticate(request.headers.get("authorization"))
        request.state.principal = principal
        if need is not Need.PUBLIC:
            if principal is None:
                raise unauthorized("this call needs a key: send 'Authorization: Bearer <secret>'")
            if need is Need.NODE and not (principal.is_node or principal.is_cluster_admin):
                raise forbidden("this call is for nodes of the cluster")
            if need is Need.CLUSTER_ADMIN and not principal.is_cluster_admin:
                raise forbidden("this call needs an admin key of the default tenant")
        return await endpoint(request)

    guarded.__name__ = getattr(endpoint, "__name__", "guarded")
    return Route(api.path, guarded, methods=[api.method])
