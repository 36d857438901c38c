"""The Lambda Invoke API, called by a real boto3 client (and the aws CLI): SigV4 with
an edgerun key id and secret, Lambda's invocation types, tail logs and errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_everywhere, node_secret, wait_for

pytestmark = pytest.mark.integration

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def key(cluster: LocalCluster) -> dict[str, Any]:
    with Client(cluster.control_url, cluster.token) as client:
        for name, placement in (("lam-ctx", "edge"), ("lam-far", "region")):
            deploy_everywhere(
                cluster, client, name, FUNCTIONS / "lambda-context", placement=placement,
                auth="key", memory_mb=128,
            )  # fmt: skip
        deploy_everywhere(cluster, client, "lam-raiser", FUNCTIONS / "raiser", auth="key")
        client.set_alias("lam-ctx", "prod", "latest")
        created: dict[str, Any] = client.create_key(["invoke:lam-*"], name="boto3")
        return created


def lam(cluster: LocalCluster, key_id: str, secret: str) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=cluster.url("pop-1"),
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture(scope="module")
def aws(cluster: LocalCluster, key: dict[str, Any]) -> Iterator[Any]:
    yield lam(cluster, key["id"], key["secret"])


def payload(resp: dict[str, Any]) -> Any:
    return json.loads(resp["Payload"].read())


def test_request_response_returns_the_handlers_result(aws: Any) -> None:
    resp = aws.invoke(FunctionName="lam-ctx", Payload=json.dumps({"a": 1}))
    assert resp["StatusCode"] == 200
    body = payload(resp)
    assert body["event"] == {"a": 1}
    assert "FunctionError" not in resp
    assert len(resp["ExecutedVersion"]) == 64  # the version's id


def test_the_context_looks_like_lambdas(aws: Any) -> None:
    body = payload(aws.invoke(FunctionName="lam-ctx", Qualifier="prod", Payload=b"{}"))
    assert body["invoked_function_arn"] == (
        "arn:aws:lambda:edgerun:000000000000:function:lam-ctx:prod"
    )
    assert body["function_name"] == "lam-ctx"
    assert body["memory_limit_in_mb"] == 128
    assert 0 < body["remaining_ms"] <= 30_000
    assert body["log_group_name"] == "/aws/lambda/lam-ctx"
    assert body["log_stream_name"].count("/") == 3


def test_a_qualifier_picks_the_alias_target(aws: Any, cluster: LocalCluster) -> None:
    with Client(cluster.control_url, cluster.token) as client:
        target = client.get("lam-ctx").aliases["prod"]
    resp = aws.invoke(FunctionName="lam-ctx", Qualifier="prod", Payload=b"{}")
    assert resp["ExecutedVersion"] == target


def test_tail_returns_the_end_of_the_output(aws: Any) -> None:
    resp = aws.invoke(FunctionName="lam-ctx", LogType="Tail", Payload=json.dumps({"x": 7}))
    assert "called with {'x': 7}" in base64.b64decode(resp["LogResult"]).decode()


def test_tail_works_through_a_forward_to_the_region(aws: Any) -> None:
    resp = aws.invoke(FunctionName="lam-far", LogType="Tail", Payload=json.dumps({"y": 1}))
    assert resp["StatusCode"] == 200
    assert resp["ResponseMetadata"]["HTTPHeaders"]["x-edgerun-placement"].startswith("forwarded:")
    assert "called with {'y': 1}" in base64.b64decode(resp["LogResult"]).decode()


def test_a_function_error_is_unhandled_with_lambdas_body(aws: Any) -> None:
    resp = aws.invoke(FunctionName="lam-raiser", Payload=json.dumps({"value": 3}))
    assert resp["StatusCode"] == 200
    assert resp["FunctionError"] == "Unhandled"
    body = payload(resp)
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad value: 3"
    assert any("_inner" in line for line in body["stackTrace"])


def test_dry_run_checks_without_running(aws: Any) -> None:
    resp = aws.invoke(FunctionName="lam-ctx", InvocationType="DryRun")
    assert resp["StatusCode"] == 204
    with pytest.raises(ClientError) as err:
        aws.invoke(FunctionName="lam-nope", InvocationType="DryRun")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_an_unknown_function_is_resource_not_found(aws: Any) -> None:
    with pytest.raises(ClientError) as err:
        aws.invoke(FunctionName="lam-missing", Payload=b"{}")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_a_wrong_secret_is_a_403(cluster: LocalCluster, key: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as err:
        lam(cluster, key["id"], "not-the-secret").invoke(FunctionName="lam-ctx", Payload=b"{}")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_an_unknown_key_id_is_a_403(cluster: LocalCluster, key: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as err:
        lam(cluster, "k_not_a_key", key["secret"]).invoke(FunctionName="lam-ctx", Payload=b"{}")
    assert err.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_key_without_invoke_scope_on_it_is_denied(
    cluster: LocalCluster, key: dict[str, Any]
) -> None:
    with Client(cluster.control_url, cluster.token) as client:
        deploy_everywhere(cluster, client, "other-fn", auth="key")
    with pytest.raises(ClientError) as err:
        lam(cluster, key["id"], key["secret"]).invoke(FunctionName="other-fn", Payload=b"{}")
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"


def test_a_tampered_body_breaks_the_signature(cluster: LocalCluster, key: dict[str, Any]) -> None:
    client = lam(cluster, key["id"], key["secret"])

    def tamper(request: Any, **_: Any) -> None:
        request.body = b'{"tampered": true}'
        request.headers["Content-Length"] = str(len(request.body))

    client.meta.events.register_last("before-send.lambda.Invoke", tamper)
    with pytest.raises(ClientError) as err:
        client.invoke(FunctionName="lam-ctx", Payload=b'{"a": 1}')
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_an_event_invocation_is_queued_with_202_and_runs(aws: Any, cluster: LocalCluster) -> None:
    resp = aws.invoke(FunctionName="lam-ctx", InvocationType="Event", Payload=b'{"ev": 1}')
    assert resp["StatusCode"] == 202
    assert resp["Payload"].read() == b""
    event_id = resp["ResponseMetadata"]["HTTPHeaders"]["x-edgerun-event-id"]

    def ran() -> bool:
        logs = httpx.get(
            f"{cluster.url('pop-1')}/v1/logs",
            params={"function": "lam-ctx", "since": "0", "settled": "false", "limit": "1000"},
            headers={"authorization": f"Bearer {cluster.token}"},
        ).json()["logs"]
        return any(e["request_id"].startswith(event_id) and e["status"] == 200 for e in logs)

    wait_for(ran, timeout=20, what="the event to run")


def test_a_bearer_key_works_too(cluster: LocalCluster, key: dict[str, Any]) -> None:
    resp = httpx.post(
        f"{cluster.url('pop-1')}/2015-03-31/functions/lam-ctx/invocations",
        content=b'{"b": 2}',
        headers={"authorization": f"Bearer {key['secret']}"},
    )
    assert resp.status_code == 200
    assert resp.json()["event"] == {"b": 2}


def test_a_malformed_signature_header_is_a_clear_403(cluster: LocalCluster) -> None:
    resp = httpx.post(
        f"{cluster.url('pop-1')}/2015-03-31/functions/lam-ctx/invocations",
        content=b"{}",
        headers={"authorization": "AWS4-HMAC-SHA256 Credential=garbage"},
    )
    assert resp.status_code == 403
    assert resp.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert "well-formed" in resp.json()["message"]


def test_the_aws_cli_invokes_too(
    cluster: LocalCluster, key: dict[str, Any], tmp_path: Path
) -> None:
    aws_cli = Path(sys.executable).parent / "aws"  # the project's (awscli v1, from PyPI)
    if not aws_cli.exists():
        pytest.fail("the aws CLI is missing: ./scripts/install installs awscli")
    out = tmp_path / "out.json"
    done = subprocess.run(
        [str(aws_cli), "lambda", "invoke", "--endpoint-url", cluster.url("pop-1"),
         "--function-name", "lam-ctx", "--payload", '{"cli": true}', str(out)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AWS_ACCESS_KEY_ID": key["id"],
             "AWS_SECRET_ACCESS_KEY": key["secret"], "AWS_DEFAULT_REGION": REGION,
             "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["StatusCode"] == 200
    assert json.loads(out.read_text())["event"] == {"cli": True}


def _signing(cluster: LocalCluster, key_id: str, secret: str, **params: str) -> httpx.Response:
    today = datetime.now(UTC).strftime("%Y%m%d")
    return httpx.get(
        f"{cluster.control_url}/v1/node/sigv4/{key_id}",
        params={"date": today, "region": REGION} | params,
        headers={"authorization": f"Bearer {secret}"},
    )


def test_signing_keys_go_to_nodes_only(cluster: LocalCluster, key: dict[str, Any]) -> None:
    node = node_secret(cluster, "pop-1")
    ok = _signing(cluster, key["id"], node)
    assert ok.status_code == 200
    assert len(bytes.fromhex(ok.json()["signing_key"])) == 32
    assert _signing(cluster, key["id"], cluster.token).status_code == 403  # not even the admin
    assert _signing(cluster, key["id"], key["secret"]).status_code == 403


def test_signing_keys_are_for_about_today_only(cluster: LocalCluster, key: dict[str, Any]) -> None:
    node = node_secret(cluster, "pop-1")
    resp = _signing(cluster, key["id"], node, date="20200101")
    assert resp.status_code == 400
    assert "today" in resp.json()["error"]["message"]


def test_a_revoked_key_gets_no_signing_key_and_cannot_invoke(cluster: LocalCluster) -> None:
    with Client(cluster.control_url, cluster.token) as client:
        doomed = client.create_key(["invoke:lam-*"], name="doomed")
        client.revoke_key(doomed["id"])
    assert _signing(cluster, doomed["id"], node_secret(cluster, "pop-1")).status_code == 404
    wait_for(
        lambda: _invoke_code(cluster, doomed) == "UnrecognizedClientException",
        what="the POP to learn of the revocation",
    )


def _invoke_code(cluster: LocalCluster, key: dict[str, Any]) -> str:
    try:
        lam(cluster, key["id"], key["secret"]).invoke(FunctionName="lam-ctx", Payload=b"{}")
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "ok"


def test_an_unknown_invocation_type_is_a_clear_400(
    cluster: LocalCluster, key: dict[str, Any]
) -> None:
    resp = httpx.post(
        f"{cluster.url('pop-1')}/2015-03-31/functions/lam-ctx/invocations",
        content=b"{}",
        headers={"authorization": f"Bearer {key['secret']}", "x-amz-invocation-type": "Bogus"},
    )
    assert resp.status_code == 400
    assert resp.headers["x-amzn-errortype"] == "InvalidParameterValueException"
    assert "RequestResponse" in resp.json()["message"]


def test_only_invoke_is_served_under_the_lambda_prefix(
    cluster: LocalCluster, key: dict[str, Any]
) -> None:
    resp = httpx.post(
        f"{cluster.url('pop-1')}/2015-03-31/functions/lam-ctx/policy",
        content=b"{}",
        headers={"authorization": f"Bearer {key['secret']}"},
    )
    assert resp.status_code == 404
    assert resp.headers["x-amzn-errortype"] == "UnknownOperationException"


def test_a_payload_that_is_not_json_is_invalid_request_content(aws: Any) -> None:
    with pytest.raises(ClientError) as err:
        aws.invoke(FunctionName="lam-ctx", Payload=b"{not json")
    assert err.value.response["Error"]["Code"] == "InvalidRequestContentException"
