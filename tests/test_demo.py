"""End-to-end test of the digits demo (python/explain_digits.py) with tiny settings."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from .scripts import load_script


def test_load_data_shapes_and_range():
    demo = load_script("explain_digits.py")
    x_train, y_train, x_test, y_test = demo.load_data(seed=0)
    assert x_train.shape[1:] == (1, 32, 32) and x_test.shape[1:] == (1, 32, 32)
    assert len(x_train) + len(x_test) == 1797  # scikit-learn's digits
    assert len(x_test) == 360  # 20%, stratified
    assert float(x_train.min()) >= 0.0 and float(x_train.max()) <= 1.0
    assert set(y_test.tolist()) == set(range(10))


@pytest.mark.slow
def test_main_writes_png_and_summary(tmp_path, capsys):
    demo = load_script("explain_digits.py")
    out = tmp_path / "demo"
    summary = demo.main(["--out", str(out), "--epochs", "1", "--seed", "0", "--num-images", "4"])

    png, js = out / "heatmaps.png", out / "summary.json"
    assert png.is_file() and js.is_file()
    assert json.loads(js.read_text()) == summary

    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["epochs"] == 1 and summary["num_test"] == 360
    assert len(summary["train_loss"]) == 1 and math.isfinite(summary["train_loss"][0])
    images = summary["images"]
    assert len(images) == 4
    for item in images:
        assert 0 <= item["label"] <= 9 and 0 <= item["predicted"] <= 9
        assert math.isfinite(item["logit"]) and math.isfinite(item["relevance_sum"])
    # the heatmaps are not all zero
    assert any(item["relevance_sum"] != 0.0 for item in images)

    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.size == (4 * 2 * 200, 200)  # 4 image | heatmap groups in one row
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 0  # not a blank figure

    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "wrote" in printed


def test_cli_rejects_bad_arguments():
    demo = load_script("explain_digits.py")
    with pytest.raises(SystemExit):
        demo.parse_args(["--epochs", "0"])
