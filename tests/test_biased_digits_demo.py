"""End to end: the biased-digits experiment (python/biased_digits.py) with tiny settings."""

import json
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image

from isnet_kernels.isnet.presets import TRAINER_PRESETS

from .scripts import load_script


@pytest.mark.slow
def test_demo_writes_report_table_and_figure(tmp_path):
    demo = load_script("biased_digits.py")
    out = tmp_path / "demo"
    summary = demo.main(["--out", str(out), "--plain-epochs", "1", "--isnet-epochs", "1", "--per-class", "6",
                         "--per-class-test", "2", "--num-images", "3", "--quiet"])
    report = (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(summary))
    env = summary["environment"]  # what the figures were computed with
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["cpu_capability"]
    assert "Computed on:" in report and f"torch {torch.__version__}" in report
    for split in demo.SPLITS:
        for name in ("plain", "isnet"):
            r = summary["results"][name][split]
            assert r["images"] == 20 and 0 <= r["accuracy"] <= 1 and 0 <= r["background_fraction"] <= 1
        row = next(line for line in report.splitlines() if line.startswith(f"| {split} |"))
        assert f"{100 * summary['results']['isnet'][split]['accuracy']:.1f}%" in row
    config = json.loads((out / "runs" / "isnet" / "config.json").read_text())
    assert config["variant"] == "selective" and config["preset"] == "default"
    assert {k: config[k] for k in TRAINER_PRESETS["default"]} == TRAINER_PRESETS["default"]
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
def test_defaults_study_trains_every_setting_and_the_heldout_defaults(tmp_path):
    study = load_script("defaults_study.py")
    out = tmp_path / "study"
    study.main(["--out", str(out), "--epochs", "1", "--epochs-heldout", "1", "--epochs-long", "2", "--seeds", "0",
                "--per-class", "2", "--per-class-heldout", "2", "--per-class-test", "1"])
    result = json.loads((out / "study.json").read_text())
    runs = result["runs"]
    names = [study.CLEAN, *study.SETTINGS]
    assert [r["method"] for r in runs[:len(names) + 2]] == names + [study.CLEAN_LONG.format(2),
                                                                     study.DEFAULTS_LONG.format(2)]
    assert runs[len(names) + 1]["settings"]["epochs"] == 2
    for r in runs[:len(names)]:
        config = json.loads((Path(r["settings"]["out"]) / "config.json").read_text())
        for key, value in study.SETTINGS.get(r["method"], {}).items():
            assert config[key] == value, (r["method"], key)
        assert set(r["splits"]) == set(study.SPLITS) and r["splits"]["test_unbiased"]["images"] == 10
    heldout = [r for r in runs if "held out" in r["dataset"]]
    assert [r["method"] for r in heldout] == [study.PLAIN, study.CLEAN, study.DEFAULTS]
    config = json.loads((Path(heldout[2]["settings"]["out"]) / "config.json").read_text())
    # the held-out run is the package's defaults: nothing but the variant, arch, epochs and seed was given
    assert {k: config[k] for k in TRAINER_PRESETS["default"]} == TRAINER_PRESETS["default"]
    table = [line for line in (out / "study.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert len(table) == len(result["rows"]) == 2 * (len(names) + 2) + 3


@pytest.mark.slow
def test_compare_every_method_both_data_sets_mean_and_std(tmp_path):
    compare = load_script("compare.py")
    out = tmp_path / "compare"
    args = ["--out", str(out), "--epochs", "1", "--seeds", "0", "1", "--per-class", "2", "--per-class-test", "1",
            "--quiet", "--datasets", "biased digits", "biased tags"]
    rows = compare.main(args)
    assert [(r["dataset"], r["method"]) for r in rows] == [(d, m) for d in ("biased digits", "biased tags")
                                                           for m in compare.METHODS]
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert len(runs) == 2 * 2 * len(compare.METHODS)
    for row in rows:
        accs = [r["splits"]["test_unbiased"]["accuracy"] for r in runs
                if (r["dataset"], r["method"]) == (row["dataset"], row["method"])]
        assert row["seeds"] == 2 and row["test_unbiased"]["mean"] == pytest.approx(statistics.mean(accs))
        assert row["test_unbiased"]["std"] == pytest.approx(statistics.stdev(accs))
    for r in runs:
        config = json.loads((Path(r["settings"]["out"]) / "config.json").read_text())
        for key, value in compare.METHODS[r["method"]].items():
            assert config[key] == value
    text = (out / "compare.md").read_text()
    assert sum(line.startswith("| biased") for line in text.splitlines()) == len(rows)
    with Image.open(out / "compare.png") as png:
        assert png.size == (1400, 680)
    # a second call trains nothing again: every run's record (with its training time) is read back
    again = compare.main(args)
    assert json.loads((out / "compare.json").read_text())["runs"] == runs and len(again) == len(rows)


@pytest.mark.slow
def test_compare_on_the_biased_scenes_has_its_own_epochs_and_worst_group(tmp_path):
    compare = load_script("compare.py")
    out = tmp_path / "compare"
    rows = compare.main(["--out", str(out), "--seeds", "0", "--per-class-test", "1", "--quiet", "--datasets",
                         "biased scenes", "--scenes-epochs", "2", "--scenes-per-class", "3", "--epochs", "1"])
    assert [(r["dataset"], r["method"]) for r in rows] == [("biased scenes", m) for m in compare.METHODS]
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert {r["settings"]["epochs"] for r in runs} == {2}  # the scenes' epochs, not --epochs
    info = json.loads((Path(runs[0]["settings"]["data"]) / "info.json").read_text())
    assert info["name"] == "biased-scenes" and info["counts"]["train"] == 30
    # worst-group accuracy: the lowest accuracy over the split's groups, which the scenes have
    for r, row in zip(runs, rows):
        split = r["splits"]["test_unbiased"]
        assert split["worst_group_accuracy"] == min(split["group_accuracy"].values())
        assert row["test_unbiased_worst_group"]["mean"] == split["worst_group_accuracy"]
    assert "worst group (unbiased)" in (out / "compare.md").read_text()


@pytest.mark.slow
def test_defaults_check_trains_the_defaults_beside_the_target_on_every_kind(tmp_path):
    check = load_script("defaults_check.py")
    out = tmp_path / "check"
    kinds = ["biased digits 40x40 on noise (held out)", "biased scenes, other photographs (held out)"]
    rows = check.main(["--out", str(out), "--seeds", "0", "--epochs", "1", "--per-class", "2", "--per-class-test",
                       "1", "--quiet", "--kinds", *kinds])
    assert [(r["dataset"], r["method"]) for r in rows] == [
        (kinds[0], check.ISNET), (kinds[0], check.CLEAN), (kinds[1], check.ISNET), (kinds[1], check.CLEAN),
        (kinds[1], check.PLAIN)]
    runs = json.loads((out / "check.json").read_text())["runs"]
    isnet = json.loads((Path(runs[0]["settings"]["out"]) / "config.json").read_text())
    # the ISNet is the package's defaults: nothing but the variant, arch, epochs and seed was given
    assert {k: isnet[k] for k in TRAINER_PRESETS["default"]} == TRAINER_PRESETS["default"]
    assert isnet["C2"] == 1000.0 and runs[1]["settings"]["train_split"] == "train_clean"
    scenes = json.loads((Path(runs[2]["settings"]["data"]) / "info.json").read_text())
    assert (scenes["seed"], scenes["photo_seed"]) == (1, 1)  # not the set C2 was measured on
    lines = [line for line in (out / "check.md").read_text().splitlines() if line.startswith("| biased")]
    assert len(lines) == 5 and all(line.endswith(("| met |", "| missed |")) for line in lines[::2][:2])
    target = rows[1]["test_unbiased"]["mean"]
    learnt = f"{rows[0]['test_unbiased']['mean'] / target:.2f}" if target else None
    assert learnt is None or f"| {learnt} |" in lines[0]
