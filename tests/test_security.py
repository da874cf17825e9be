"""TLS, mutual TLS and bearer tokens on a real server (certificates made at test time); what it discloses."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from serve_support import scrape, value
from tls_support import Pki, make_pki

from service.config import ServerConfig
from service.errors import ModelLoadError
from service.model_store import ModelStore
from service.rpc.api import aeguard_pb2 as pb
from service.rpc.api import aeguard_pb2_grpc as pb_grpc
from service.rpc.server import ServerHandle, build_server

TOKEN = "s3cret-token-for-the-tests-0123456789"
OTHER_TOKEN = "another-token-for-the-tests-9876543210"
NO_PROXY = [("grpc.enable_http_proxy", 0)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"# clients of this test\nbatch-job:{TOKEN}\n\n{OTHER_TOKEN}\n")
    return path


def serve(tiny_model_path, **settings) -> ServerHandle:
    store = ModelStore()
    store.load_path(tiny_model_path)
    return build_server(ServerConfig(port=0, metrics_port=0, **settings), store)


@pytest.fixture(scope="module")
def mtls_server(tiny_model_path, pki, tokens_file) -> Iterator[ServerHandle]:
    handle = serve(
        tiny_model_path,
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
        auth_tokens_file=str(tokens_file),
        health_port=0,
    )
    yield handle
    handle.stop(0)


def tls_channel(handle: ServerHandle, pki: Pki, cert: Path | None, key: Path | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{handle.port}", creds, options=NO_PROXY)


def request() -> pb.ScoreRequest:
    x = np.zeros((1, 8), dtype=np.float32)
    return pb.ScoreRequest(samples=pb.Matrix(rows=1, cols=8, raw=x.tobytes()))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_client_with_certificate_and_token_is_served(mtls_server, pki):
    with tls_channel(mtls_server, pki, pki.client_cert, pki.client_key) as ch:
        stub = pb_grpc.AnomalyDetectorStub(ch)
        assert len(stub.Score(request(), metadata=bearer(TOKEN), timeout=10).results) == 1
        assert len(stub.Score(request(), metadata=bearer(OTHER_TOKEN), timeout=10).results) == 1


def test_a_plaintext_client_is_refused_by_a_tls_server(mtls_server):
    target = f"127.0.0.1:{mtls_server.port}"
    with grpc.insecure_channel(target, options=NO_PROXY) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=bearer(TOKEN), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("who", ["no certificate", "certificate from another CA"])
def test_a_client_without_an_accepted_certificate_is_refused_under_mtls(mtls_server, pki, who):
    cert, key = (None, None) if who == "no certificate" else (pki.stranger_cert, pki.stranger_key)
    with tls_channel(mtls_server, pki, cert, key) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=bearer(TOKEN), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ([], "missing"),
        (bearer("wrong-token-of-enough-length"), "invalid"),
        ([("authorization", TOKEN)], "invalid"),
    ],
)
def test_a_missing_or_wrong_token_gets_unauthenticated_without_a_hint(mtls_server, pki, metadata, reason):
    before = scrape(mtls_server.metrics_port)
    with tls_channel(mtls_server, pki, pki.client_cert, pki.client_key) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=metadata, timeout=5)
        with pytest.raises(grpc.RpcError) as stream_err:
            list(pb_grpc.AnomalyDetectorStub(ch).ScoreStream(iter([request()]), metadata=metadata, timeout=5))
    for e in (err.value, stream_err.value):
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        assert e.details() == "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
    after = scrape(mtls_server.metrics_port)
    assert (
        value(after, "aeguard_auth_failures_total", reason=reason)
        - value(before, "aeguard_auth_failures_total", reason=reason)
        == 2
    )
    assert value(after, "aeguard_rpc_requests_total", method="Score", code="UNAUTHENTICATED") >= 1


def test_health_is_open_without_a_token_and_on_the_plaintext_health_port(mtls_server, pki):
    with tls_channel(mtls_server, pki, pki.client_cert, pki.client_key) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Kubernetes' gRPC probes speak neither TLS nor tokens: the health-only port answers them.
    with grpc.insecure_channel(f"127.0.0.1:{mtls_server.health_port}", options=NO_PROXY) as ch:
        probe = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="aeguard.v1.AnomalyDetector"), timeout=5
        )
        assert probe.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # and nothing else
            pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=bearer(TOKEN), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_needs_a_token_when_tokens_are_on(mtls_server, pki):
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with tls_channel(mtls_server, pki, pki.client_cert, pki.client_key) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.ServerReflectionInfo(iter([ask]), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = list(stub.ServerReflectionInfo(iter([ask]), metadata=bearer(TOKEN), timeout=5))
    names = [s.name for s in answer[0].list_services_response.service]
    assert "aeguard.v1.AnomalyDetector" in names


def test_model_info_keeps_the_training_file_name_but_not_its_directory(mtls_server, pki):
    with tls_channel(mtls_server, pki, pki.client_cert, pki.client_key) as ch:
        info = pb_grpc.AnomalyDetectorStub(ch).GetModelInfo(
            pb.GetModelInfoRequest(), metadata=bearer(TOKEN), timeout=5
        )
    assert info.training["source"] == "tiny.csv"  # trained from .../tiny_data0/tiny.csv
    assert len(info.training["fingerprint_sha256"]) == 64


def test_certificates_and_tokens_are_rotated_on_reload(tiny_model_path, pki, tmp_path):
    cert, key, tokens = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "tokens"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    tokens.write_text(f"{TOKEN}\n")
    handle = serve(
        tiny_model_path,
        tls_cert=str(cert),
        tls_key=str(key),
        auth_tokens_file=str(tokens),
        reload_interval_s=0.2,
    )
    from service.rpc.process import start_reloader

    reloader = start_reloader(handle, handle.config)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{handle.port}", creds, options=NO_PROXY) as ch:
            stub = pb_grpc.AnomalyDetectorStub(ch)
            assert stub.Score(request(), metadata=bearer(TOKEN), timeout=5).results
            tokens.write_text(f"{OTHER_TOKEN}\n")  # rotate the token...
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    stub.Score(request(), metadata=bearer(TOKEN), timeout=5)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the old token still works 30 s after the tokens file changed")
            assert stub.Score(request(), metadata=bearer(OTHER_TOKEN), timeout=5).results
        # ...and the certificate: a broken one is refused and the served one stays...
        cert.write_text("not a certificate\n")
        time.sleep(1.5)
        with grpc.secure_channel(f"127.0.0.1:{handle.port}", creds, options=NO_PROXY) as ch:
            assert pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=bearer(OTHER_TOKEN), timeout=5)
        # ...and a new valid one (signed by another CA) is used for new connections.
        other = make_pki(tmp_path / "other")
        shutil.copy(other.server_key, key)
        shutil.copy(other.server_cert, cert)
        new_creds = grpc.ssl_channel_credentials(root_certificates=other.ca.read_bytes())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with grpc.secure_channel(f"127.0.0.1:{handle.port}", new_creds, options=NO_PROXY) as ch:
                try:
                    pb_grpc.AnomalyDetectorStub(ch).Score(request(), metadata=bearer(OTHER_TOKEN), timeout=2)
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
        else:
            pytest.fail("the rotated certificate was not served within 30 s")
    finally:
        reloader.stop()
        handle.stop(0)


def test_bad_tls_and_token_settings_are_refused_with_a_clear_message(tiny_model_path, tmp_path, pki):
    short = tmp_path / "tokens"
    short.write_text("too-short\n")
    with pytest.raises(ModelLoadError, match=r"tokens:1: token shorter than 16 characters"):
        serve(tiny_model_path, auth_tokens_file=str(short))
    with pytest.raises(Exception, match=r"the key must match the certificate"):
        serve(tiny_model_path, tls_cert=str(pki.server_cert), tls_key=str(pki.client_key))


def test_the_python_client_and_the_batch_job_speak_mtls_with_a_token(mtls_server, pki, tmp_path, capsys):
    from batch_support import score, summary_json

    from service.client import Client, Security
    from service.errors import UnauthenticatedError

    target = f"127.0.0.1:{mtls_server.port}"
    tls = {"tls_ca": str(pki.ca), "tls_cert": str(pki.client_cert), "tls_key": str(pki.client_key)}
    with Client(target, security=Security(**tls, token=TOKEN), timeout_s=10) as client:
        assert len(client.score(np.zeros((3, 8)))) == 3
        assert client.model_info().name == "tiny"
    with (
        Client(target, security=Security(**tls), timeout_s=10) as client,
        pytest.raises(UnauthenticatedError),
    ):
        client.score(np.zeros((1, 8)))
    rows = tmp_path / "in.csv"
    rows.write_text("f0,f1,f2,f3,f4,f5,f6,f7\n" + "1,2,3,4,5,6,7,8\n" * 5)
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    args = ["--target", target, "--input", rows, "--output", tmp_path / "out.csv", "--json"]
    tls_args = ["--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key]
    assert score(*args, *tls_args, "--token-file", token_file) == 0
    assert summary_json(capsys.readouterr().out)["rows"] == 5
    assert score(*args, *tls_args) == 2  # no token: refused, one clear line
    assert "missing or invalid bearer token" in capsys.readouterr().err


def test_the_compose_stacks_secrets_and_settings_serve_tls_tokens_and_probes(tiny_model_path, tmp_path):
    """deploy/dev-secrets.sh makes what deploy/compose.yaml's settings need, and a real server accepts it."""
    import subprocess

    import yaml

    from service.client import Client, Security

    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "deploy" / "dev-secrets.sh", tmp_path / "dev-secrets.sh")
    subprocess.run(["sh", str(tmp_path / "dev-secrets.sh")], check=True, capture_output=True, timeout=60)
    secrets = tmp_path / "secrets"
    env = yaml.safe_load((repo / "deploy" / "compose.yaml").read_text())["services"]["aeguard"]["environment"]
    settings = {
        "tls_cert": env["AEGUARD_TLS_CERT"].replace("/secrets", str(secrets)),
        "tls_key": env["AEGUARD_TLS_KEY"].replace("/secrets", str(secrets)),
        "auth_tokens_file": env["AEGUARD_AUTH_TOKENS_FILE"].replace("/secrets", str(secrets)),
        "health_port": 0,
    }
    handle = serve(tiny_model_path, **settings)
    try:
        token = (secrets / "client-token").read_text().strip()
        security = Security(tls_ca=str(secrets / "ca.crt"), token=token)
        with Client(f"localhost:{handle.port}", security=security, timeout_s=10) as client:
            assert len(client.score(np.zeros((2, 8)))) == 2
        healthcheck = subprocess.run(
            [sys.executable, str(repo / "deploy" / "healthcheck.py")],
            env={"AEGUARD_HEALTH_PORT": str(handle.health_port), "AEGUARD_PORT": str(handle.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert healthcheck.returncode == 0, healthcheck.stderr
    finally:
        handle.stop(0)
