"""`vitlab models --details NAME`: the model card."""

import re

from vitlab.analysis.complexity import model_info
from vitlab.cli import main


def test_card_shows_reference_counts_and_measured_parity(capsys):
    assert main(["--threads", "1", "models", "--details", "vt_resnet18", "--check-parity"]) == 0
    card = capsys.readouterr().out
    info = model_info("vt_resnet18")
    assert f"params      {info['params'] / 1e6:.2f}M" in card
    assert f"GMACs       {info['gmacs']:.2f} at 224x224" in card
    assert "Visual Transformers" in card or "VT" in card
    errors = [float(e) for e in re.findall(r"measured max rel\. error ([0-9.e+-]+)", card)]
    assert errors and all(e < 1e-8 for e in errors)


def test_card_of_an_unknown_model_is_an_error(capsys):
    assert main(["models", "--details", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_listing_still_works(capsys):
    assert main(["models", "vt_resnet1*"]) == 0
    assert "vt_resnet18" in capsys.readouterr().out
