"""`aeguard score --target HOST:PORT`: scoring through a real server's ScoreStream gives the local output.

The server is the real one (``build_server`` on 127.0.0.1 port 0) serving the tiny model.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest
from batch_support import score, summary_json, tiny_table, write_parquet

from service.batch.remote import RemoteScorer, metadata_from_info
from service.client import Client
from service.config import ServerConfig
from service.errors import AeguardError
from service.model_store import ModelStore
from service.rpc.server import ServerHandle, build_server
from service.scorer import Scorer

MAX_BATCH_ROWS = 64


class DoubledScorer(Scorer):
    """The tiny model with every score doubled: a second model the output can tell apart."""

    def score(self, x, *, with_feature_errors=False):
        scored = super().score(x, with_feature_errors=with_feature_errors)
        return self.classify(scored.score * 2, scored.feature_errors)


@pytest.fixture(scope="module")
def server(tiny_model_path) -> Iterator[ServerHandle]:
    store = ModelStore()
    store.load_path(tiny_model_path)
    tiny = store.get().scorer
    store.swap("doubled", DoubledScorer(tiny.session, tiny.metadata, "doubled"))
    # The same network with its levels renamed: what a model replaced mid-job looks like.
    relabelled = [dataclasses.replace(t, name=f"level-{i}") for i, t in enumerate(tiny.metadata.thresholds)]
    store.swap(
        "relabelled", Scorer(tiny.session, dataclasses.replace(tiny.metadata, thresholds=relabelled), "r")
    )
    handle = build_server(
        ServerConfig(host="127.0.0.1", port=0, metrics_port=0, max_batch_rows=MAX_BATCH_ROWS), store
    )
    yield handle
    handle.stop(0)


@pytest.fixture(scope="module")
def source(tiny_dataset, tmp_path_factory):
    return write_parquet(tiny_table(tiny_dataset), tmp_path_factory.mktemp("remote") / "in.parquet")


@pytest.mark.parametrize("top_k", [0, 3])
def test_remote_output_equals_local_output(server, source, tiny_model_path, tmp_path, capsys, top_k):
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    common = ["--input", source, "--id-column", "id", "--keep-columns", "label", "--top-k", top_k, "--json"]
    assert score("--model", tiny_model_path, "--output", local, *common) == 0
    local_doc = summary_json(capsys.readouterr().out)
    assert (
        score(
            "--target",
            f"127.0.0.1:{server.port}",
            "--output",
            remote,
            *common,
            "--chunk-rows",
            "200",
            "--remote-batch-rows",
            MAX_BATCH_ROWS,
        )
        == 0
    )
    remote_doc = summary_json(capsys.readouterr().out)
    assert pq.read_table(remote).equals(pq.read_table(local))
    assert remote_doc["engine"] == f"remote 127.0.0.1:{server.port}"
    assert remote_doc["anomalies"] == local_doc["anomalies"] and remote_doc["rows"] == local_doc["rows"]


def test_remote_batches_above_the_server_limit_fail_cleanly(server, source, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    rc = score(
        "--target",
        f"127.0.0.1:{server.port}",
        "--input",
        source,
        "--output",
        out,
        "--remote-batch-rows",
        MAX_BATCH_ROWS + 1,
    )
    assert rc == 2
    assert str(MAX_BATCH_ROWS) in capsys.readouterr().err
    assert not out.exists()


def test_unreachable_target_is_a_clear_error(source, tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o.parquet"
    args = ["--target", f"127.0.0.1:{port}", "--input", source, "--output", out, "--connect-timeout-s", "1"]
    assert score(*args) == 2
    assert f"127.0.0.1:{port}: not reachable within 1.0 s" in capsys.readouterr().err
    assert not out.exists()


def test_model_name_picks_the_server_model(server, source, tiny_model_path, tmp_path):
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    assert score("--model", tiny_model_path, "--input", source, "--output", local) == 0
    target = f"127.0.0.1:{server.port}"
    args = ["--target", target, "--model-name", "doubled", "--remote-batch-rows", MAX_BATCH_ROWS]
    assert score(*args, "--input", source, "--output", remote) == 0
    doubled, expected = pq.read_table(remote), pq.read_table(local)
    np.testing.assert_array_equal(doubled.column("score").to_numpy(), expected.column("score").to_numpy() * 2)
    assert doubled.column("is_anomaly").to_numpy().sum() > expected.column("is_anomaly").to_numpy().sum()


def test_unknown_model_name_is_a_clear_error(server, source, tmp_path, capsys):
    out = tmp_path / "o.parquet"
    args = [
        "--target",
        f"127.0.0.1:{server.port}",
        "--model-name",
        "nope",
        "--input",
        source,
        "--output",
        out,
    ]
    assert score(*args) == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


def test_remote_scores_arrive_as_columns_equal_to_local_scores(server, tiny_model_path, tiny_dataset):
    x = tiny_dataset.X[:150]
    local = Scorer.load(tiny_model_path).score(x, with_feature_errors=True)
    with RemoteScorer.connect(
        f"127.0.0.1:{server.port}", "tiny", feature_errors=True, batch_rows=64
    ) as remote:
        got = remote.score(x, with_feature_errors=True)
    np.testing.assert_array_equal(got.score, local.score)
    np.testing.assert_array_equal(got.normalized_score, local.normalized_score)
    np.testing.assert_array_equal(got.severity_level, local.severity_level)
    np.testing.assert_array_equal(got.is_anomaly, local.is_anomaly)
    np.testing.assert_array_equal(got.feature_errors, local.feature_errors)
    assert got.severity_level.dtype == local.severity_level.dtype and got.is_anomaly.dtype == bool


def test_severity_levels_that_differ_from_the_jobs_are_refused(server, tiny_dataset):
    # The job took its metadata from 'tiny'; the stream answers with 'relabelled''s levels.
    client = Client(f"127.0.0.1:{server.port}")
    metadata = metadata_from_info(client.model_info("tiny"))
    remote = RemoteScorer(client, metadata, "relabelled", feature_errors=False, batch_rows=64)
    with remote, pytest.raises(AeguardError, match=r"levels \['none', 'level-0', 'level-1'\].*replaced"):
        remote.score(tiny_dataset.X[:10], with_feature_errors=False)
