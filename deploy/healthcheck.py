"""Container health check: ask the local server's grpc.health.v1 service; exit 0 only if SERVING.

Used by the image's HEALTHCHECK (Docker, compose). Kubernetes uses its native gRPC probes instead.
Asks the plaintext health-only port ``AEGUARD_HEALTH_PORT`` when it is set (needed when the main
port speaks TLS), else ``AEGUARD_PORT`` (default 50051); an optional argument names the health
service to ask (default: the overall server status, "").
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def check(target: str, service: str = "", timeout_s: float = TIMEOUT_S) -> bool:
    """True if the server at ``target`` reports ``service`` as SERVING within ``timeout_s``."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(
            f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr
        )
    return serving


def main(argv: list[str]) -> int:
    health_port = int(os.environ.get("AEGUARD_HEALTH_PORT", "-1"))
    port = health_port if health_port > 0 else int(os.environ.get("AEGUARD_PORT", "50051"))
    target = f"127.0.0.1:{port}"
    return 0 if check(target, argv[0] if argv else "") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
