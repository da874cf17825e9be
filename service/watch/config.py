"""Settings of `aeguard watch`: a frozen dataclass; each field is a flag, an ``AEGUARD_*`` variable, a help.

Durations are Prometheus durations (``30s``, ``5m``) or plain seconds, as text, checked at start-up.
The same layering as the server's (:mod:`service.config`): a flag wins over the variable, the
variable over the default.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service.errors import InvalidInputError
from service.watch.prometheus import PrometheusAccess
from service.watch.times import parse_duration


@dataclass(frozen=True)
class WatchSettings:
    """Settings of `aeguard watch`."""

    prometheus: str = ""
    """Base URL of the Prometheus to read (http://prometheus:9090); the queries come from the model."""
    model: str = ""
    """Model to watch with: one .onnx file trained with `aeguard train --prometheus`, or a directory of
    them (each is scored every interval); reloaded when a file changes."""
    interval: str = "30s"
    """How often every group is scored (a Prometheus duration)."""
    host: str = "127.0.0.1"
    """Address of the /metrics HTTP server (use 0.0.0.0 in a container)."""
    metrics_port: int = 9465
    """Port of the /metrics HTTP server; 0 picks a free one (printed at start-up)."""
    max_groups: int = 10_000
    """Most groups scored per model (after sharding); the rest are counted and logged once."""
    shard: str = "0/1"
    """i/N: score only the groups whose stable hash modulo N is i, so N replicas share a fleet."""
    stale_after: str = ""
    """A group's exported scores are removed once it has gone this long without a fresh score (the group
    disappeared, lost a feature, or Prometheus failed); empty = 3 intervals."""
    query_timeout: str = "10s"
    """How long one HTTP request to Prometheus may take."""
    retries: int = 2
    """Extra tries of a failed query within one cycle (unreachable, timeout, 5xx), with back-off."""
    retry_backoff: str = "500ms"
    """Wait before the first retry; doubled for each further one, never past the next cycle."""
    prometheus_bearer_token_file: str = ""
    """File holding a bearer token sent to Prometheus (read per request, so rotation applies)."""
    prometheus_username: str = ""
    """Basic-auth user name for Prometheus."""
    prometheus_password_file: str = ""
    """File holding the basic-auth password for Prometheus."""
    prometheus_ca_file: str = ""
    """PEM CA bundle that signed Prometheus' certificate (https URLs), instead of the system's."""
    reload_interval_s: float = 10.0
    """How often the model path is looked at for changes; 0 = only on SIGHUP."""

    def __post_init__(self) -> None:
        if not self.prometheus:
            raise InvalidInputError("--prometheus URL is required (or AEGUARD_PROMETHEUS)")
        if not self.model:
            raise InvalidInputError("--model PATH is required (or AEGUARD_MODEL)")
        self.access()  # checks the URL and the auth files
        for name in ("interval", "query_timeout", "retry_backoff"):
            parse_duration(getattr(self, name), name.replace("_", "-"))
        if self.stale_after:
            parse_duration(self.stale_after, "stale-after")
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidInputError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.max_groups < 1 or self.retries < 0 or self.reload_interval_s < 0:
            raise InvalidInputError("max_groups must be >= 1, retries >= 0, reload_interval_s >= 0")
        parse_shard(self.shard)

    @property
    def interval_s(self) -> float:
        return parse_duration(self.interval)

    @property
    def stale_after_s(self) -> float:
        return parse_duration(self.stale_after) if self.stale_after else 3 * self.interval_s

    @property
    def shard_index(self) -> tuple[int, int]:
        return parse_shard(self.shard)

    def access(self) -> PrometheusAccess:
        return PrometheusAccess(
            url=self.prometheus,
            bearer_token_file=self.prometheus_bearer_token_file,
            username=self.prometheus_username,
            password_file=self.prometheus_password_file,
            ca_file=self.prometheus_ca_file,
            timeout_s=parse_duration(self.query_timeout, "query-timeout"),
        )


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise InvalidInputError(f"shard: {text!r} must be i/N, e.g. 0/3 (the first of 3 replicas)") from None
    if n < 1 or not 0 <= i < n:
        raise InvalidInputError(f"shard: {text!r} needs N >= 1 and 0 <= i < N")
    return i, n


def shard_of(key: tuple[str, ...], shards: int) -> int:
    """The shard of a group: a hash of its label values that is the same in every process and release."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards
