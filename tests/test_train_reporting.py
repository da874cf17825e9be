"""What `aeguard train`, `inspect` and the report tell a user: every network of an ensemble, thresholds
in words, a parity verdict, rows counted from 1, and only the splits that were used."""

from __future__ import annotations

import contextlib
import csv
import io
import re

import numpy as np
import pytest

from service.artifact import Threshold, describe_threshold
from service.cli import main
from training import defaults
from training.api import TrainOptions, train_model
from training.fitting.fit import FitConfig
from training.report.html import learning_curves_figure

QUICK = ["--hidden", "16", "--coding-size", "2", "--max-epochs", "12", "--patience", "4", "--no-progress"]


def _run(argv: list[str]) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue()


@pytest.fixture(scope="module")
def ensemble_run(tiny_dataset, tmp_path_factory):
    """The default three-network ensemble with an F1 threshold and a report: (model, report, summary)."""
    out = tmp_path_factory.mktemp("reporting")
    model, report = out / "m.onnx", out / "report"
    argv = ["train", str(tiny_dataset.csv_path), "--out", str(model), "--label-column", "label", *QUICK]
    argv += ["--threshold", "warning=q0.98", "--threshold", "best=f1", "--report", str(report)]
    return model, report, _run(argv)


def test_summary_describes_every_network_of_an_ensemble(ensemble_run):
    _, _, summary = ensemble_run
    training = next(ln for ln in summary.splitlines() if ln.startswith("training"))
    assert re.search(r"3 networks: \d+ / \d+ / \d+ epochs \(best \d+ / \d+ / \d+;", training), training
    loss = next(ln for ln in summary.splitlines() if ln.startswith("loss"))
    assert loss.count("|") == 2, loss  # one train / validation pair per network


def test_inspect_describes_every_network_and_only_used_splits(ensemble_run, tiny_model_path):
    model, _, _ = ensemble_run
    text = _run(["inspect", str(model)])
    assert re.search(r"3 networks: \d+ / \d+ / \d+ epochs", text), text
    split = next(ln for ln in text.splitlines() if ln.startswith("split"))
    assert "tuning" in split  # an F1 threshold was tuned on it
    # The session's tiny model has quantile thresholds only: its tuning split is the calibration split.
    tiny = _run(["inspect", str(tiny_model_path)])
    split = next(ln for ln in tiny.splitlines() if ln.startswith("split"))
    assert "calibration" in split and "tuning" not in split


def test_f1_threshold_and_parity_read_as_words(ensemble_run):
    model, _, summary = ensemble_run
    for text in (summary, _run(["inspect", str(model)])):
        assert "(f1 1)" not in text and "f1 1" not in text
        assert re.search(r"F1-optimal on the tuning split \(F1 \d\.\d{3} there\)", text), text
        parity = next(ln for ln in text.splitlines() if "parity" in ln)
        assert "parity ok: onnxruntime reproduces torch" in parity or parity.split()[1] == "ok:", parity


def test_unresolvable_quantile_says_so_plainly():
    q999 = Threshold("critical", 10.9, "quantile", 0.999)
    assert describe_threshold(q999, 975).startswith("quantile 0.999 (975 calibration rows cannot resolve")
    assert describe_threshold(q999, 1000) == "quantile 0.999"
    assert describe_threshold(Threshold("w", 1.0, "quantile", 0.99), 975) == "quantile 0.99"


def test_default_thresholds_are_resolved_by_the_default_models_calibration_split(tmp_path):
    """The built-in model's calibration split (975 rows) must resolve every default quantile."""
    out = tmp_path / "default.onnx"
    _run(["train", "--default", "--out", str(out), "--max-epochs", "2", "--no-progress"])
    from service.scorer import Scorer

    meta = Scorer.load(out).metadata
    calibration = meta.training["split_rows"]["calibration"]
    assert [f"{t.name}={t.method[0]}{t.param:g}" for t in meta.thresholds] == list(
        defaults.DEFAULT_THRESHOLDS
    )
    for t in meta.thresholds:
        assert t.method == "quantile" and (1 - t.param) * calibration >= 1, (t, calibration)
    assert "cannot resolve" not in _run(["inspect", str(out)])


def test_report_counts_rows_from_one_like_score(ensemble_run, tiny_dataset):
    _, report, _ = ensemble_run
    page = (report / "index.html").read_text()
    assert "row (from 1)" in page
    first_table = page.split("<h4>coding unit 1")[1].split("</table>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", first_table.split("<tbody>")[1])
    row, values = int(cells[0]), [float(v) for v in cells[2 : 2 + 8]]
    with tiny_dataset.csv_path.open() as fh:
        data_rows = list(csv.reader(fh))[1:]  # row 1 is the first line after the header
    np.testing.assert_allclose(values, [float(v) for v in data_rows[row - 1][:8]], rtol=1e-3)


def test_learning_curves_show_every_network(tiny_dataset):
    options = TrainOptions(
        name="pair",
        thresholds=("warning=q0.9",),
        fit=FitConfig(hidden=[8], coding_size=2, max_epochs=6, seed=0, activation="tanh,gelu"),
    )
    result = train_model(tiny_dataset.normal, tiny_dataset.feature_names, None, options=options)
    fig = learning_curves_figure(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["network 1 of 2 (tanh)", "network 2 of 2 (gelu)"]
    epochs = [len(ax.get_lines()[0].get_xdata()) for ax in fig.axes]
    assert epochs == [len(f.train_loss) for f in result.member_fits]


def test_evaluate_nan_message_suggests_only_what_evaluate_can_do(tiny_model_path, tmp_path, capsys):
    data = tmp_path / "nan.csv"
    data.write_text("f0,f1,f2,f3,f4,f5,f6,f7\n1,2,3,,5,6,7,8\n1,2,3,4,5,6,7,8\n")
    assert main(["evaluate", str(tiny_model_path), str(data)]) == 2
    err = capsys.readouterr().err
    assert "'f3'" in err and "Clean or drop those rows" in err
    # evaluate reads exactly the model's features: no option of its own leaves one out.
    assert "`aeguard train` can also leave a column out with --exclude-columns" in err
