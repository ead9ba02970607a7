"""Only the endpoint is called, and misconfiguration is one sentence: dummy credentials for a loopback
emulator (never the instance-metadata service), the right advice when credentials are missing, a named
profile, a region that does not exist, and an endpoint where something other than AWS answers.

These tests run local HTTP servers on 127.0.0.1 and subprocesses; none needs the emulator.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import botocore.utils
import pytest

from microbus.errors import ConfigurationError, TransportError
from microbus.wire.transport import AWSSettings, SNSTransport, SQSTransport

pytestmark = pytest.mark.timeout(60)
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_CREDENTIAL_FILE",
)
KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}


# The network guard of the root conftest


def test_the_guard_refuses_a_non_loopback_connection_at_once(socket_guard):
    before = len(socket_guard.violations)
    try:
        with pytest.raises(RuntimeError, match="network guard"):
            socket.create_connection(("10.255.255.1", 9), timeout=30)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            with pytest.raises(RuntimeError, match="network guard"):
                sock.connect(("10.255.255.1", 9))
            with pytest.raises(RuntimeError, match="network guard"):
                sock.connect_ex(("169.254.169.254", 80))
        assert len(socket_guard.violations) == before + 3
    finally:
        del socket_guard.violations[before:]  # expected here: do not fail this test for them


def test_the_guard_lets_loopback_through():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.create_connection(("localhost", port), timeout=5):
            pass


# Credentials for a loopback emulator


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers like SQS/SNS would (an empty JSON or XML success) and records each Authorization header."""

    seen: list[str]
    status = 200
    content_type = "application/x-amz-json-1.0"
    body = b"{}"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[str]:
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:
        server_class = type("V6Server", (http.server.ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    try:
        server = server_class((host, 0), handler)
    except OSError as exc:
        pytest.skip(f"cannot listen on {host}: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """An environment with no AWS credentials, profile or config anywhere."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    return tmp_path


@pytest.fixture
def metadata_calls(monkeypatch):
    """Every attempt to ask the instance-metadata or container-credentials service, recorded."""
    calls: list[str] = []

    def refuse(name):
        def call(self, *args, **kwargs):
            calls.append(name)
            return {}

        return call

    monkeypatch.setattr(botocore.utils.InstanceMetadataFetcher, "retrieve_iam_role_credentials", refuse("imds"))
    monkeypatch.setattr(botocore.utils.ContainerMetadataFetcher, "retrieve_full_uri", refuse("container"))
    monkeypatch.setattr(botocore.utils.ContainerMetadataFetcher, "retrieve_uri", refuse("container"))
    return calls


def recorder(host: str = "127.0.0.1", **overrides: object) -> tuple[AbstractContextManager[str], list[str]]:
    seen: list[str] = []
    handler = type("Handler", (_Recorder,), {"seen": seen, **overrides})
    return _serve(handler, host), seen


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_a_loopback_emulator_without_credentials_gets_dummy_ones_and_no_metadata_call(
    no_credentials, metadata_calls, host
):
    server, seen = recorder("127.0.0.1" if host == "localhost" else host)
    with server as url:
        if host == "localhost":
            url = url.replace("127.0.0.1", "localhost")
        settings = AWSSettings(endpoint_url=url)
        SQSTransport(client=settings.client("sqs"), queue_url=f"{url}/123456789012/q").get_attributes()
    assert metadata_calls == []
    assert len(seen) == 1 and "Credential=" in seen[0]


def test_credentials_from_the_environment_are_used_with_a_loopback_emulator(no_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    server, seen = recorder()
    with server as url:
        SQSTransport(client=AWSSettings(endpoint_url=url).client("sqs"), queue_url=f"{url}/1/q").get_attributes()
    assert "Credential=AKIAFROMENVIRONMENT/" in seen[0]


def test_explicit_credentials_are_used_with_a_loopback_emulator(no_credentials):
    server, seen = recorder()
    with server as url:
        settings = AWSSettings(endpoint_url=url, access_key_id="AKIAEXPLICIT", secret_access_key="s")
        SQSTransport(client=settings.client("sqs"), queue_url=f"{url}/1/q").get_attributes()
    assert "Credential=AKIAEXPLICIT/" in seen[0]


@pytest.mark.parametrize("how", ["setting", "environment"])
def test_a_profile_s_credentials_are_used_with_a_loopback_emulator(no_credentials, monkeypatch, how):
    (no_credentials / "no-credentials").write_text(
        "[dev]\naws_access_key_id = AKIAFROMPROFILE\naws_secret_access_key = secret-from-profile\n"
    )
    if how == "environment":
        monkeypatch.setenv("AWS_PROFILE", "dev")
    server, seen = recorder()
    with server as url:
        settings = AWSSettings(endpoint_url=url, profile_name="dev" if how == "setting" else None)
        SQSTransport(client=settings.client("sqs"), queue_url=f"{url}/1/q").get_attributes()
    assert "Credential=AKIAFROMPROFILE/" in seen[0]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:4566", True),
        ("http://127.1.2.3:4566", True),
        ("http://localhost:5000", True),
        ("http://LOCALHOST", True),
        ("http://[::1]:4566", True),
        ("https://sqs.us-east-1.amazonaws.com", False),
        ("http://localstack:4566", False),
        ("http://10.0.0.5:4566", False),
        ("http://127.0.0.1.example.com", False),
        (None, False),
    ],
)
def test_which_endpoints_are_loopback(url, loopback):
    from microbus.wire.transport import is_loopback_endpoint

    assert is_loopback_endpoint(url) is loopback


def test_no_credentials_for_another_host_says_to_set_them_not_to_use_an_emulator(no_credentials, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = AWSSettings(endpoint_url="http://10.255.255.1:4566").client("sqs")
    with pytest.raises(ConfigurationError) as raised:
        SQSTransport(client=client, queue_url="http://10.255.255.1:4566/1/q").get_attributes()
    text = str(raised.value)
    assert "emulator endpoint" not in text
    assert "http://10.255.255.1:4566" in text and "aws.access_key_id" in text and "\n" not in text


def test_no_credentials_for_aws_names_the_credential_chain(no_credentials, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = AWSSettings().client("sqs")
    with pytest.raises(ConfigurationError) as raised:
        SQSTransport(client=client, queue_url="https://sqs.us-east-1.amazonaws.com/1/q").get_attributes()
    text = str(raised.value)
    assert text.startswith("No AWS credentials found for SQS queue https://sqs.us-east-1.amazonaws.com/1/q")
    assert "AWS_PROFILE" in text and "\n" not in text


# Profiles


def test_a_missing_profile_from_the_environment_is_named(no_credentials, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "nosuch")
    with pytest.raises(ConfigurationError) as raised:
        AWSSettings(endpoint_url="http://127.0.0.1:9").client("sqs")
    assert "'nosuch'" in str(raised.value) and "AWS_PROFILE" in str(raised.value)
    assert "None" not in str(raised.value)


def test_a_missing_configured_profile_is_named(no_credentials):
    with pytest.raises(ConfigurationError) as raised:
        AWSSettings(profile_name="other").client("sqs")
    assert "'other'" in str(raised.value) and "aws.profile_name" in str(raised.value)


# Regions


@pytest.mark.parametrize("region", ["mars-1", "", "  ", "us-east-1; rm -rf"])
def test_a_region_that_is_not_one_is_a_configuration_error(no_credentials, region):
    with pytest.raises(ConfigurationError) as raised:
        AWSSettings(endpoint_url="http://127.0.0.1:9", region_name=region, **KEYS).client("sqs")
    assert "aws.region_name" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3", "ap-southeast-7", "us-gov-west-1", "cn-north-1"])
def test_real_regions_are_accepted(no_credentials, region):
    AWSSettings(endpoint_url="http://127.0.0.1:9", region_name=region, **KEYS).client("sqs")


# An endpoint where something other than AWS answers

_PAGE = (
    b"<!doctype html>\n<html><head><title>Hello</title></head>\n<body>\n"
    + b"<p>not AWS</p>\n" * 500
    + b"</body></html>"
)


@pytest.mark.parametrize("status", [200, 404])
@pytest.mark.parametrize("service", ["sqs", "sns"])
def test_an_html_answer_is_one_sentence_naming_the_endpoint(no_credentials, status, service):
    server, _ = recorder(status=status, content_type="text/html; charset=utf-8", body=_PAGE)
    with server as url:
        client = AWSSettings(endpoint_url=url, **KEYS).client(service)
        with pytest.raises(TransportError) as raised:
            if service == "sqs":
                SQSTransport(client=client, queue_url=f"{url}/123456789012/q").get_attributes()
            else:
                SNSTransport(client=client).topic_attributes("arn:aws:sns:us-east-1:123456789012:t")
    text = str(raised.value)
    assert "\n" not in text and len(text) < 400 and "<html" not in text
    assert "not an AWS" in text and "endpoint" in text


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in AWS_VARIABLES}
    return subprocess.run(args, env={**base, **env}, capture_output=True, text=True, timeout=45, cwd=ROOT)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("status", [200, 404])
def test_a_daemon_pointed_at_a_non_aws_server_exits_2_with_one_line(status):
    server, _ = recorder(status=status, content_type="text/html", body=_PAGE)
    with server as url:
        result = _run(
            [str(BIN / "microbus"), "run", "microbus.reference.daemons.orders:OrdersDaemon", "--endpoint-url", url,
             "--sqs-queue-url", f"{url}/123456789012/orders", "--wait-seconds", "1"],
            {},
        )  # fmt: skip
    line = _one_line(result)
    assert "not an AWS" in line and url in line


@pytest.mark.parametrize("region", ["mars-1", ""])
def test_a_daemon_with_a_region_that_is_not_one_exits_2_with_one_line(region):
    server, seen = recorder()
    with server as url:
        result = _run(
            [str(BIN / "microbus"), "run", "microbus.reference.daemons.orders:OrdersDaemon", "--endpoint-url", url,
             "--sqs-queue-url", f"{url}/123456789012/orders", "--wait-seconds", "1"],
            {"ORDERS__AWS__REGION_NAME": region},
        )  # fmt: skip
    assert "aws.region_name" in _one_line(result)
    assert seen == []


@pytest.mark.parametrize(
    ("options", "env"), [([], {"AWS_DEFAULT_REGION": "mars-1"}), (["--region", ""], {})], ids=["mars-1", "empty"]
)
def test_the_topology_command_with_a_region_that_is_not_one_exits_2_with_one_line(options, env):
    server, seen = recorder()
    with server as url:
        result = _run([str(BIN / "microbus"), "topology", "--endpoint-url", url, *options, "plan"], env)
    assert "region" in _one_line(result)
    assert seen == []
