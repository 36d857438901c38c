"""The `edgerun` command, run as users run it: as a separate process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgerun.cluster import LocalCluster, free_port
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgerun", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def cli_env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {
        "EDGERUN_CONTROL": cluster.control_url,
        "EDGERUN_TOKEN": cluster.token,
        "EDGERUN_HOME": str(tmp_path_factory.mktemp("home")),
        "COLUMNS": "200",
    }


def test_deploy_then_invoke_prints_result_and_where_it_ran(
    cli_env: dict[str, str], pop: str
) -> None:
    deployed = run("deploy", str(EXAMPLES / "hello"), "--name", "cli-hello", env=cli_env)
    assert deployed.returncode == 0, deployed.stderr
    assert "deployed cli-hello version" in deployed.stdout
    for _ in range(100):
        result = run("invoke", "cli-hello", "--pop", pop, env=cli_env)
        if result.returncode == 0:
            break
        time.sleep(0.05)
    assert result.returncode == 0, result.stderr
    assert "hello, world!" in result.stdout
    assert "ran at pop-1" in result.stderr


def test_deploy_vendors_requirements(cli_env: dict[str, str], pop: str) -> None:
    deployed = run("deploy", str(EXAMPLES / "with-deps"), "--name", "cli-deps", env=cli_env)
    assert deployed.returncode == 0, deployed.stderr
    ls = run("ls", env=cli_env)
    assert "cli-deps" in ls.stdout


def test_errors_are_one_line_without_traceback(cli_env: dict[str, str], pop: str) -> None:
    result = run("invoke", "does-not-exist", "--pop", pop, env=cli_env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "does not exist" in result.stderr


def test_deploy_of_missing_folder_fails_clearly(cli_env: dict[str, str]) -> None:
    result = run("deploy", "/no/such/folder", env=cli_env)
    assert result.returncode == 1
    assert "error:" in result.stderr and "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_env_option_fails_clearly(cli_env: dict[str, str]) -> None:
    result = run("deploy", str(EXAMPLES / "hello"), "--env", "NOEQUALS", env=cli_env)
    assert result.returncode == 1
    assert "KEY=VALUE" in result.stderr


def test_up_demo_serves_examples_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    topo = tmp_path / "topology.toml"
    topo.write_text(
        f"[control]\nport = {ports[0]}\n\n"
        f'[[region]]\nname = "r1"\nport = {ports[1]}\n\n'
        f'[[region]]\nname = "r2"\nport = {ports[2]}\n\n'
        f'[[pop]]\nname = "p1"\nport = {ports[3]}\n'
    )
    env = {**os.environ, "EDGERUN_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "up", "--demo", "--config", str(topo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        text = "".join(lines)
        assert "deployed hello" in text, text
        pop = f"http://127.0.0.1:{ports[3]}"
        deadline = time.monotonic() + 10
        while True:
            resp = httpx.get(f"{pop}/fn/hello/?name=up")
            if resp.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert resp.json()["message"] == "hello, up!"
        status = run("status", env=env)
        assert status.returncode == 0 and "p1" in status.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0
    assert "stopped." in rest
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{ports[0]}/v1/health")


def test_status_shows_a_refused_token_as_an_error(cluster: LocalCluster, tmp_path: Path) -> None:
    """A node that refuses the token is not "up"; the token comes from the state file
    even with no control plane configured."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "wrong-token").write_text("not-the-token\n")
    nodes = [{"name": "pop-1", "role": "pop", "url": cluster.url("pop-1")}]
    state = {"nodes": nodes, "token_file": str(home / "wrong-token")}
    (home / "cluster.json").write_text(json.dumps(state))
    env = {"EDGERUN_HOME": str(home), "COLUMNS": "200", "EDGERUN_TOKEN": "", "EDGERUN_CONTROL": ""}
    result = run("status", env=env)
    assert result.returncode == 0, result.stderr
    assert "key refused (HTTP 401)" in result.stdout
    assert "up" not in result.stdout.split("pop-1", 1)[1]


def test_keys_create_prints_id_and_secret_once_and_ls_never_shows_it(
    cli_env: dict[str, str],
) -> None:
    assert run("tenants", "create", "clitenant", env=cli_env).returncode == 0
    created = run(
        "keys", "create", "--tenant", "clitenant", "--scope", "invoke:api-*", "--json", env=cli_env
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["id"].startswith("EK") and key["secret"].startswith("ers_")
    assert key["scopes"] == ["invoke:api-*"]
    listed = run("keys", "ls", "--tenant", "clitenant", env=cli_env)
    assert key["id"] in listed.stdout
    assert key["secret"] not in listed.stdout
    assert run("keys", "revoke", key["id"], env=cli_env).returncode == 0
    assert "revoked" in run("keys", "ls", "--tenant", "clitenant", env=cli_env).stdout
    tenants = run("tenants", "ls", env=cli_env)
    assert "clitenant" in tenants.stdout and "default" in tenants.stdout
    assert run("tenants", "rm", "clitenant", env=cli_env).returncode == 0


def test_a_bad_scope_is_one_clear_line(cli_env: dict[str, str]) -> None:
    result = run("keys", "create", "--scope", "superuser", env=cli_env)
    assert result.returncode == 1
    assert "unknown scope 'superuser'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_key_comes_from_a_profile_when_not_given(cluster: LocalCluster, tmp_path: Path) -> None:
    home = {"EDGERUN_HOME": str(tmp_path), "COLUMNS": "200"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    login = subprocess.run(
        [sys.executable, "-m", "edgerun", "login", "--control", cluster.control_url,
         "--key", cluster.token],
        capture_output=True, text=True, timeout=60, env={**env, **home},
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert (tmp_path / "profiles.toml").stat().st_mode & 0o077 == 0
    listed = subprocess.run(
        [sys.executable, "-m", "edgerun", "tenants", "ls"],
        capture_output=True, text=True, timeout=60, env={**env, **home},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "default" in listed.stdout
    wrong = subprocess.run(
        [sys.executable, "-m", "edgerun", "tenants", "ls"],
        capture_output=True, text=True, timeout=60,
        env={**env, **home, "EDGERUN_KEY": "ers_not-a-key"},
    )  # fmt: skip
    assert wrong.returncode == 1
    assert "Unauthorized" in wrong.stderr


def test_secrets_are_set_from_stdin_and_a_dotenv_and_listed_by_name(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    put = subprocess.run(
        [sys.executable, "-m", "edgerun", "secret", "put", "cli-secrets", "API_TOKEN"],
        input="tok-7e1d\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, **cli_env},
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    dotenv = tmp_path / "prod.env"
    dotenv.write_text('export DB_URL="postgres://u:p@db/app"\n# comment\nREGION=eu\n')
    bulk = run("secret", "bulk", "cli-secrets", str(dotenv), env=cli_env)
    assert bulk.returncode == 0, bulk.stderr
    listed = run("secret", "ls", "cli-secrets", env=cli_env)
    assert listed.stdout.split() == ["API_TOKEN", "DB_URL", "REGION"]
    assert "tok-7e1d" not in listed.stdout + bulk.stdout + put.stdout
    assert run("secret", "rm", "cli-secrets", "REGION", env=cli_env).returncode == 0
    assert run("secret", "ls", "cli-secrets", env=cli_env).stdout.split() == ["API_TOKEN", "DB_URL"]
