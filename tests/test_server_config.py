"""The server's typed config: flags over AEGUARD_* variables over defaults; checked values."""

from __future__ import annotations

import argparse

import pytest

from service.config import ServerConfig, add_arguments, field_docs
from service.errors import InvalidInputError


def test_flags_win_over_environment_over_defaults():
    env = {"AEGUARD_PORT": "7000", "AEGUARD_MAX_BATCH_ROWS": "99", "AEGUARD_GRACE_S": "2.5", "OTHER": "x"}
    config = ServerConfig.from_sources({"port": 7001, "host": None}, env)
    assert config.port == 7001  # flag
    assert config.max_batch_rows == 99 and config.grace_s == 2.5  # environment, typed
    assert config.host == "127.0.0.1"  # default


def test_every_field_is_a_documented_flag():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m.onnx", "--metrics-port", "0", "--default-model", "x"])
    config = ServerConfig.from_sources(vars(args), {})
    assert (config.model, config.metrics_port, config.default_model) == ("m.onnx", 0, "x")
    docs = field_docs()
    assert set(docs) == set(ServerConfig.__dataclass_fields__)
    assert all(docs.values())


@pytest.mark.parametrize(
    ("values", "env", "message"),
    [
        ({}, {"AEGUARD_PORT": "http"}, "AEGUARD_PORT='http' is not a valid int"),
        ({"port": 70000}, {}, "port must be in 0..65535"),
        ({"max_batch_rows": 0}, {}, "max_batch_rows must be >= 1"),
        ({"nonsense": 1}, {}, "unknown settings"),
    ],
)
def test_bad_settings_are_named(values, env, message):
    with pytest.raises(InvalidInputError, match=message):
        ServerConfig.from_sources(values, env)


def test_message_limit_fits_the_largest_batch():
    config = ServerConfig(max_batch_rows=1000, max_features=100)
    assert config.message_limit_bytes >= 1000 * 100 * 4
    assert ServerConfig(max_message_bytes=12345).message_limit_bytes == 12345
    assert ServerConfig(host="0.0.0.0").metrics_address == "0.0.0.0"
