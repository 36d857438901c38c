"""The Python SDK: the control API and invocations, used by the CLI and tests."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from edgerun.models import FunctionConfig, FunctionRecord

_records = msgspec.json.Decoder(FunctionRecord)


class EdgerunError(Exception):
    """An API answered with an error; ``type`` and ``message`` come from its body."""

    def __init__(self, status: int, type: str, message: str, body: Any = None) -> None:
        super().__init__(f"{type}: {message} (HTTP {status})")
        self.status = status
        self.type = type
        self.message = message
        self.body = body


@dataclass
class Invocation:
    status: int
    headers: httpx.Headers
    content: bytes
    elapsed_ms: float = 0.0

    @property
    def node(self) -> str:
        return str(self.headers.get("x-edgerun-node", ""))

    @property
    def placement(self) -> str:
        return str(self.headers.get("x-edgerun-placement", ""))

    @property
    def reason(self) -> str:
        return str(self.headers.get("x-edgerun-reason", ""))

    def json(self) -> Any:
        return msgspec.json.decode(self.content)


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        err = body["error"]
        raise EdgerunError(resp.status_code, err.get("type", "Error"), err.get("message", ""), body)
    except (ValueError, KeyError, TypeError):
        raise EdgerunError(resp.status_code, "HTTPError", resp.text[:200]) from None


class Client:
    def __init__(
        self,
        control_url: str,
        token: str = "",
        *,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``verify``: what an HTTPS control plane's certificate must chain to
        (e.g. ``edgerun.tls.client_verify(TlsConfig(ca=...))`` for a private CA)."""
        self.control_url = control_url.rstrip("/")
        self.token = token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.request(method, f"{self.control_url}{path}", **kw)
        except httpx.HTTPError as exc:
            raise EdgerunError(
                0, "ConnectionError", f"cannot reach {self.control_url}: {exc}"
            ) from None
        _raise_for(resp)
        return resp

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health").json()  # type: ignore[no-any-return]

    def upload_bundle(self, data: bytes) -> str:
        resp = self._call(
            "POST", "/v1/bundles", content=data, headers={"content-type": "application/zip"}
        )
        return str(resp.json()["sha256"])

    def deploy(self, name: str, bundle: bytes, config: FunctionConfig) -> FunctionRecord:
        return self.put_function(name, self.upload_bundle(bundle), config)

    def put_function(self, name: str, bundle_sha256: str, config: FunctionConfig) -> FunctionRecord:
        """Point ``name`` at an uploaded bundle (many functions may share one)."""
        body = msgspec.json.encode({"bundle_sha256": bundle_sha256, "config": config})
        resp = self._call(
            "PUT",
            f"/v1/functions/{name}",
            content=body,
            headers={"content-type": "application/json"},
        )
        return _records.decode(resp.content)

    def get(self, name: str) -> FunctionRecord:
        return _records.decode(self._call("GET", f"/v1/functions/{name}").content)

    def list_functions(self, page_size: int = 100) -> Iterator[FunctionRecord]:
        after = ""
        while True:
            resp = self._call("GET", "/v1/functions", params={"limit": page_size, "after": after})
            page = msgspec.json.decode(resp.content, type=dict[str, Any])
            for raw in page["functions"]:
                yield msgspec.convert(raw, FunctionRecord)
            if not page["next"]:
                return
            after = page["next"]

    def schedules(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """The caller's scheduled functions: name, schedule, next_fire (ISO 8601, UTC),
        next_fire_in_s and last_fired."""
        after = ""
        while True:
            resp = self._call("GET", "/v1/schedules", params={"limit": page_size, "after": after})
            page = resp.json()
            yield from page["schedules"]
            if not page["next"]:
                return
            after = page["next"]

    def versions(self, name: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/functions/{name}/versions").json()["versions"]  # type: ignore[no-any-return]

    def set_alias(self, name: str, alias: str, version: str) -> FunctionRecord:
        resp = self._call("PUT", f"/v1/functions/{name}/aliases/{alias}", json={"version": version})
        return _records.decode(resp.content)

    def delete_alias(self, name: str, alias: str) -> FunctionRecord:
        return _records.decode(
            self._call("DELETE", f"/v1/functions/{name}/aliases/{alias}").content
        )

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/v1/functions/{name}")

    # --- secrets ----------------------------------------------------------------
    def put_secret(self, name: str, key: str, value: str) -> dict[str, Any]:
        resp = self._call("PUT", f"/v1/functions/{name}/secrets/{key}", json={"value": value})
        return resp.json()  # type: ignore[no-any-return]

    def put_secrets(self, name: str, values: dict[str, str]) -> dict[str, Any]:
        resp = self._call("POST", f"/v1/functions/{name}/secrets", json={"secrets": values})
        return resp.json()  # type: ignore[no-any-return]

    def secret_names(self, name: str) -> list[str]:
        return self._call("GET", f"/v1/functions/{name}/secrets").json()["names"]  # type: ignore[no-any-return]

    def delete_secret(self, name: str, key: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/functions/{name}/secrets/{key}").json()  # type: ignore[no-any-return]

    # --- tenants, keys, nodes ---------------------------------------------------
    def tenants(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/tenants").json()["tenants"]  # type: ignore[no-any-return]

    def create_tenant(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/v1/tenants", json={"name": name}).json()  # type: ignore[no-any-return]

    def delete_tenant(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/tenants/{name}").json()  # type: ignore[no-any-return]

    def create_key(
        self,
        scopes: list[str],
        *,
        tenant: str = "",
        name: str = "",
        rate_per_s: float | None = None,
        max_concurrency: int | None = None,
    ) -> dict[str, Any]:
        """A new key; the answer holds its ``id`` and ``secret`` (shown only now)."""
        body: dict[str, Any] = {"scopes": scopes, "tenant": tenant, "name": name}
        if rate_per_s is not None:
            body["rate_per_s"] = rate_per_s
        if max_concurrency is not None:
            body["max_concurrency"] = max_concurrency
        return self._call("POST", "/v1/keys", json=body).json()  # type: ignore[no-any-return]

    def keys(self, tenant: str = "") -> list[dict[str, Any]]:
        params = {"tenant": tenant} if tenant else {}
        return self._call("GET", "/v1/keys", params=params).json()["keys"]  # type: ignore[no-any-return]

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/keys/{key_id}").json()  # type: ignore[no-any-return]

    def join_token(self, role: str, name: str, ttl_s: float = 3600.0) -> dict[str, Any]:
        body = {"role": role, "name": name, "ttl_s": ttl_s}
        return self._call("POST", "/v1/join-tokens", json=body).json()  # type: ignore[no-any-return]

    def nodes(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/nodes").json()["nodes"]  # type: ignore[no-any-return]

    def revoke_node(self, key_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/nodes/{key_id}").json()  # type: ignore[no-any-return]


def invoke(
    node_url: str,
    name: str,
    payload: Any = None,
    *,
    qualifier: str | None = None,
    key: str = "",
    timeout: float = 60.0,
    client: httpx.Client | None = None,
    event: bool = False,
) -> Invocation:
    """Direct invoke through a node (POP or region) with the secret of a key that
    has invoke scope; does not raise on 4xx/5xx. ``event``: queue it (202) to run
    asynchronously, with retries and a failure destination."""
    target = f"{name}@{qualifier}" if qualifier else name
    http = client or httpx.Client(timeout=timeout)
    headers = {"content-type": "application/json"}
    if event:
        headers["x-edgerun-invocation-type"] = "Event"
    if key:
        headers["authorization"] = f"Bearer {key}"
    try:
        resp = http.post(
            f"{node_url.rstrip('/')}/v1/functions/{target}/invocations",
            content=msgspec.json.encode(payload if payload is not None else {}),
            headers=headers,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise EdgerunError(0, "ConnectionError", f"cannot reach {node_url}: {exc}") from None
    finally:
        if client is None:
            http.close()
    return Invocation(
        resp.status_code, resp.headers, resp.content, resp.elapsed.total_seconds() * 1000
    )
