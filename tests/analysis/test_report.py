"""`vitlab report RUN_DIR`: a self-contained HTML page, opened in headless Chromium where it is installed."""

import re
import shutil
import subprocess

import pytest

from tests.train.tiny import train_args, write_mnist
from vitlab.cli import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data, run = write_mnist(root / "data"), root / "run"
    assert main(["--threads", "1", *train_args(data, run, epochs=1)]) == 0
    assert main(["--threads", "1", "report", str(run), "--images", "16"]) == 0
    return run / "report.html"


def test_report_is_self_contained_and_complete(report):
    page = report.read_text()
    for heading in ("Configuration", "Curves", "Metrics by epoch", "Per-class accuracy", "Confusion matrix",
                    "Attention on test images", "Model card"):  # fmt: skip
        assert f"<h2>{heading}" in page, heading
    assert "params" in page and "GMACs" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from a network
    assert page.count("data:image/png;base64,") >= 4  # curves, confusion, attention, rollout


def test_a_run_without_weights_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(report, tmp_path):
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         f"--screenshot={screenshot}", "--window-size=1000,2000", report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.stat().st_size > 10_000
    assert not re.search(r"CONSOLE\(\d+\)", result.stderr), result.stderr[-2000:]  # no console message at all


def test_a_sequence_run_gets_a_report_without_image_evaluation(tmp_path):
    from tests.seq2seq.test_train import strip_args

    data = write_mnist(tmp_path / "data", train=64, test=32)
    assert main(["--threads", "1", *strip_args(data, tmp_path / "run", epochs=1)]) == 0
    assert main(["--threads", "1", "report", str(tmp_path / "run")]) == 0
    page = (tmp_path / "run" / "report.html").read_text()
    assert "test_seq_acc" in page and "--draw attention.png" in page and "<h2>Model card" in page
    assert "<h2>Per-class accuracy" not in page  # no image classification to score


def test_a_segmentation_report_lists_the_per_class_iou_and_the_predictions(tmp_path):
    from PIL import Image

    from vitlab.analysis.report import _segmentation_sections

    summary = {
        "test_miou": 50.0,
        "test_per_class_iou": {"background": 90.0, "cat": 10.0},
        "test_per_class_acc": {"background": 95.0, "cat": 20.5},
    }
    Image.new("RGB", (8, 8), (200, 0, 0)).save(tmp_path / "predictions.png")
    page = "".join(_segmentation_sections(tmp_path, summary))
    assert "test mIoU 50.00" in page
    assert "<tr><td>cat</td><td>10.00</td><td>20.50</td></tr>" in page
    assert "data:image/png;base64," in page
