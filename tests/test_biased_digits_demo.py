"""End to end: the biased-digits experiment (python/biased_digits.py) with tiny settings."""

import json

import pytest
from PIL import Image

from .scripts import load_script


@pytest.mark.slow
def test_demo_writes_report_table_and_figure(tmp_path):
    demo = load_script("biased_digits.py")
    out = tmp_path / "demo"
    summary = demo.main(["--out", str(out), "--plain-epochs", "1", "--isnet-epochs", "1", "--per-class", "6",
                         "--per-class-test", "2", "--num-images", "3", "--quiet"])
    report = (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(summary))
    for split in demo.SPLITS:
        for name in ("plain", "isnet"):
            r = summary["results"][name][split]
            assert r["images"] == 20 and 0 <= r["accuracy"] <= 1 and 0 <= r["background_fraction"] <= 1
        row = next(line for line in report.splitlines() if line.startswith(f"| {split} |"))
        assert f"{100 * summary['results']['isnet'][split]['accuracy']:.1f}%" in row
    config = json.loads((out / "runs" / "isnet" / "config.json").read_text())
    assert (config["variant"], config["select"], config["batch_stats"]) == ("selective", "label", "live")
    assert config["deep_supervision"] is True and config["first_layer"] == "epsilon"
    for name in ("plain", "isnet"):
        assert (out / "runs" / name / "last.pt").is_file()
        metrics = json.loads((out / "runs" / name / "metrics.json").read_text())
        assert len(metrics) == 1
    with Image.open(out / "heatmaps.png") as png:
        assert png.size[1] == 3 * 160  # one row per image, 1.6 in at 100 dpi
    # a second run reuses the data set
    demo.main(["--out", str(out), "--plain-epochs", "1", "--isnet-epochs", "1", "--num-images", "2", "--quiet"])
    assert (out / "data" / "info.json").is_file()


@pytest.mark.slow
def test_ablation_writes_one_row_per_setting(tmp_path):
    ablation = load_script("biased_digits_ablation.py")
    out = tmp_path / "ablation"
    rows = ablation.main(["--out", str(out), "--epochs", "1", "--per-class", "4", "--per-class-test", "1", "--quiet"])
    assert [r["name"] for r in rows] == [s[0] for s in ablation.SETTINGS]
    for row, (_, select, stats, deep) in zip(rows, ablation.SETTINGS):
        config = json.loads((out / "runs" / "ablation" / str(rows.index(row)) / "config.json").read_text())
        assert (config["select"], config["batch_stats"], config["deep_supervision"]) == (select, stats, deep)
        assert set(row["splits"]) == set(ablation.SPLITS) and row["splits"]["test_unbiased"]["images"] == 10
    lines = (out / "ablation.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| ---")]
    assert len(table) == 1 + len(rows)
    first = rows[0]["splits"]
    assert table[1].startswith("| reference (lowest, detached) | lowest | detached | no |")
    assert f"{100 * first['test_confounding']['accuracy']:.1f}%" in table[1]
    assert json.loads((out / "ablation.json").read_text())["rows"] == json.loads(json.dumps(rows))
    with Image.open(out / "ablation.png") as png:
        assert png.size == (1100, 360)
