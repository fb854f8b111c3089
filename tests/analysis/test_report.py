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
