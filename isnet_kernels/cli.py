"""The ``isnet`` command line: make a data set, train, evaluate, explain one image, run the benchmarks.

::

    isnet data biased-digits ROOT [--size 32] [--seed 0] [--per-class 300] [--per-class-val 20] [--per-class-test 50]
    isnet train --data ROOT --out RUN_DIR [--arch small] [--variant selective] [--epochs 10] [--batch-size 32] ...
    isnet train --out RUN_DIR --resume [--epochs N]
    isnet eval --run RUN_DIR [--data ROOT] [--splits test_a test_b ...]
    isnet explain --run RUN_DIR IMAGE [--mask MASK] [--target CLASS] --out fig.png
    isnet bench [--quick] [--suites explain,ops,training] [--results DIR] [--dry-run]

Also ``python -m isnet_kernels`` or ``python -m isnet_kernels.cli``; several processes with
``torchrun --nproc_per_node=N -m isnet_kernels.cli train ...`` (``--batch-size`` is the global batch).
Exit status: 0 done, 2 bad input (the message names the problem and the fix), 130 training interrupted by Ctrl-C
(a checkpoint was saved; ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dispatch import BACKENDS
from .models import ARCHITECTURES

VARIANTS = ("none", "original", "selective", "stochastic", "dual")
#: Environment of ``isnet bench --quick``: fewer rounds, one model, no memory probe.
QUICK_BENCH_ENV = {"BENCH_ROUNDS": "2", "BENCH_TRAIN_ROUNDS": "2", "BENCH_OP_ROUNDS": "3", "BENCH_MEMORY": "0",
                   "BENCH_MODELS": "resnet18"}


class CommandError(Exception):
    """Bad input to a command: printed as ``isnet <command>: error: <message>``, exit status 2."""


# --- parsers ---------------------------------------------------------------------------------------------------------
def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. width=8), got {text!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return key, parsed


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="ISNet training, evaluation and LRP heatmaps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # data
    data = sub.add_parser("data", help="write a data set")
    data_sub = data.add_subparsers(dest="dataset", metavar="DATASET")
    data_sub.required = True
    digits = data_sub.add_parser("biased-digits", help="handwritten digits with a class-coding background artefact")
    digits.add_argument("root", type=Path, help="folder to write (images/, masks/, info.json)")
    digits.add_argument("--size", type=int, default=32, help="image side in pixels, >= 24 (default 32)")
    digits.add_argument("--seed", type=int, default=0)
    digits.add_argument("--per-class", type=int, default=300, help="training images per class (default 300)")
    digits.add_argument("--per-class-val", type=int, default=20, help="validation images per class (default 20)")
    digits.add_argument("--per-class-test", type=int, default=50, help="images per class of each test split "
                        "(default 50)")
    digits.add_argument("--overwrite", action="store_true", help="replace a biased-digits set written there before")
    digits.add_argument("--quiet", action="store_true", help="no progress bar")

    # train: every option defaults to "not given", so a resumed run can tell what was asked to change
    S = argparse.SUPPRESS
    tr = sub.add_parser("train", help="train a classifier or an ISNet", argument_default=S)
    tr.add_argument("--data", metavar="ROOT", help="data set folder (images/<split>/<class>/*.png, masks/...)")
    tr.add_argument("--out", metavar="RUN_DIR", required=True, help="run directory (created; holds checkpoints "
                    "and metrics)")
    tr.add_argument("--arch", choices=list(ARCHITECTURES), help="architecture (default small)")
    tr.add_argument("--model-arg", dest="model_kwargs", type=_model_arg, action="append", metavar="KEY=VALUE",
                    help="constructor argument of the architecture, e.g. width=8 (repeatable)")
    tr.add_argument("--variant", choices=VARIANTS, help="none = plain classifier; else the ISNet variant "
                    "(default selective)")
    tr.add_argument("--epochs", type=int, help="epochs in all (default 10; on --resume, extends the run)")
    tr.add_argument("--batch-size", type=int, help="GLOBAL batch, split over torchrun processes (default 32)")
    tr.add_argument("--lr", type=float, help="SGD learning rate (default 0.01)")
    tr.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    tr.add_argument("--clip", type=float, help="gradient-norm clip, 0 = none (default 1)")
    tr.add_argument("--weight-decay", type=float, help="SGD weight decay (default 0)")
    for name, text in (("P", "heatmap loss weight (default 0.7)"), ("d", "GWRP decay (default 0.9)"),
                       ("E", "background saturation (default 1)"), ("A", "background weight (default 1)"),
                       ("B", "foreground weight (default 3)"), ("C1", "foreground lower bound (default 1)"),
                       ("C2", "foreground upper bound (default 25)")):
        tr.add_argument(f"--{name}", type=float, help=text)
    tr.add_argument("--foreground", choices=["hybrid", "l2"], help="foreground term (default hybrid)")
    tr.add_argument("--d-loss", type=float, help="GWRP decay over deep-supervision levels (default 1)")
    tr.add_argument("--nonfinite", choices=["raise", "skip", "propagate"], help="non-finite loss policy "
                    "(default raise)")
    tr.add_argument("--eps", type=float, help="LRP stabiliser (default 0.01)")
    tr.add_argument("--first-layer", choices=["zb", "epsilon"], help="first-layer rule (default zb)")
    tr.add_argument("--deep-supervision", nargs="*", metavar="MODULE", help="penalise intermediate heatmaps too: "
                    "the default layers, or the modules named")
    tr.add_argument("--select", choices=["lowest", "highest", "label"], help="selective variant's class "
                    "(default lowest)")
    tr.add_argument("--batch-stats", choices=["detached", "live"], help="train-mode BatchNorm statistics in the "
                    "heatmap's gradient: detached constants (default, the reference) or live (see ISNet)")
    tr.add_argument("--tune-cut", type=int, metavar="EPOCHS", help="choose C1/C2 by tune_cut first (EPOCHS of "
                    "plain training on a copy)")
    tr.add_argument("--seed", type=int, help="seed (default 0)")
    tr.add_argument("--num-workers", type=int, help="DataLoader workers (default 0)")
    tr.add_argument("--size", type=int, help="resize images to SIZE x SIZE")
    tr.add_argument("--channels", type=int, choices=[1, 3], help="convert images to 1 or 3 channels")
    tr.add_argument("--train-split", help="training split (default train)")
    tr.add_argument("--val-split", help="validation split (default val; '' = none)")
    tr.add_argument("--device", type=_device, help="auto, cpu, cuda or cuda:N (default auto)")
    tr.add_argument("--backend", choices=list(BACKENDS), help="relevance backend (default auto)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    tr.add_argument("--quiet", action="store_true", help="no progress bars (the per-epoch lines stay)")

    # eval
    ev = sub.add_parser("eval", help="accuracy and background relevance of a run on test splits")
    ev.add_argument("--run", required=True, type=Path, help="run directory of isnet train")
    ev.add_argument("--data", help="data set folder (default: the run's)")
    ev.add_argument("--splits", nargs="+", help="splits to evaluate (default: every test_* split)")
    ev.add_argument("--checkpoint", default="best", help="best (default: best.pt, else last.pt), last, or a file "
                    "name in the run directory")
    ev.add_argument("--batch-size", type=int, help="default: the run's")
    ev.add_argument("--device", type=_device, default="cpu")
    ev.add_argument("--quiet", action="store_true")

    # explain
    ex = sub.add_parser("explain", help="figure of one image's heatmap from a trained run")
    ex.add_argument("image", type=Path, help="image file")
    ex.add_argument("--run", required=True, type=Path, help="run directory of isnet train")
    ex.add_argument("--mask", type=Path, help="the image's foreground mask (adds an overlay panel with its outline "
                    "and prints the background-relevance fraction)")
    ex.add_argument("--target", help="class to explain: index or class name (default: the predicted class)")
    ex.add_argument("--out", required=True, type=Path, help="PNG file to write")
    ex.add_argument("--checkpoint", default="best")
    ex.add_argument("--device", type=_device, default="cpu")

    # bench
    be = sub.add_parser("bench", help="run the benchmark suites and regenerate their tables (source checkout)")
    be.add_argument("--quick", action="store_true", help="few rounds, ResNet-18 only, no memory probe; results go "
                    "to benchmarks/results/quick/ unless --results is given")
    be.add_argument("--suites", help="comma-separated subset of the suites, benchmarks/test_bench_<suite>.py "
                    "(default: all of them)")
    be.add_argument("--results", type=Path, help="folder for the JSON and tables (default benchmarks/results)")
    be.add_argument("--root", type=Path, help="repository root holding benchmarks/ (default: this package's)")
    be.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return parser


# --- commands ----------------------------------------------------------------------------------------------------
def _cmd_data(args: argparse.Namespace) -> int:
    from .data import write_biased_digits

    try:
        info = write_biased_digits(args.root, size=args.size, per_class_train=args.per_class,
                                   per_class_val=args.per_class_val, per_class_test=args.per_class_test,
                                   seed=args.seed, progress=not args.quiet, overwrite=args.overwrite)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    counts = ", ".join(f"{split} {n}" for split, n in info["counts"].items())
    print(f"wrote biased digits to {info['root']}: {info['size']}x{info['size']} px, {len(info['classes'])} "
          f"classes, seed {info['seed']}; images per split: {counts}")
    print(f"train with: isnet train --data {info['root']} --out runs/isnet")
    return 0


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig, load_checkpoint
    from .train.checkpoint import LAST

    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume", "quiet")}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    if "deep_supervision" in given:
        given["deep_supervision"] = list(given["deep_supervision"]) or True
    if "clip" in given and given["clip"] == 0:
        given["clip"] = None
    if "quiet" in args:
        given["progress"] = not args.quiet
    for key in ("epochs", "batch_size", "seed", "num_workers", "tune_cut", "size"):
        if key in given and given[key] is not None and given[key] < 0:
            raise CommandError(f"--{key.replace('_', '-')} must be >= 0, got {given[key]}")
    if getattr(args, "resume", False):
        last = Path(given["out"]) / LAST
        if not last.is_file():
            raise CommandError(f"cannot resume: {last} does not exist; start the run without --resume, or pass the "
                               "--out of a run that saved a checkpoint")
        saved = load_checkpoint(last)["config"]
        return TrainConfig.from_dict({**saved, **given})
    if "data" not in given:
        raise CommandError("--data ROOT is required for a new run (a folder with images/<split>/<class>/*.png and "
                           "masks/...); write one with: isnet data biased-digits ROOT")
    return TrainConfig(**given)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import Trainer

    config = _train_config(args)
    result = Trainer(config, resume=getattr(args, "resume", False)).fit()
    if result.interrupted:
        return 130
    if result.history:
        last = result.history[-1]
        best = f", best val accuracy {100 * result.best_val_accuracy:.2f}%" if result.best_val_accuracy is not None \
            else ""
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"done: {result.epochs_done} epoch(s) in {result.run_dir}, train accuracy "
                  f"{100 * last['train_accuracy']:.2f}%{best}")
            print(f"evaluate with: isnet eval --run {result.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_run, markdown_table

    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    out = evaluate_run(args.run, args.data, args.splits, which=args.checkpoint, batch_size=args.batch_size,
                       device=args.device, progress=not args.quiet)
    print(f"{out['run']} ({out['checkpoint']}, epoch {out['epoch']}, {out['arch']}, variant {out['variant']}) on "
          f"{out['data']}:")
    print(markdown_table(out["splits"]), end="")
    print(f"background relevance: share of |LRP| of the predicted class outside the mask. Written to "
          f"{Path(args.run) / 'eval.json'} and {Path(args.run) / 'eval.md'}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from .train import explain_image

    info = explain_image(args.run, args.image, args.out, mask=args.mask, target=args.target, which=args.checkpoint,
                         device=args.device)
    line = f"wrote {info['path']}: class {info['target']} (p={info['probability']:.3f}), predicted {info['predicted']}"
    if info["background_fraction"] is not None:
        line += f", background relevance {100 * info['background_fraction']:.1f}%"
    print(line)
    return 0


def bench_commands(root: Path, suites: Sequence[str], results: Path) -> list[list[str]]:
    """The commands ``isnet bench`` runs from ``root``: one pytest per suite, then ``benchmarks/report.py``."""
    cmds = []
    for suite in suites:
        cmds.append([sys.executable, "-m", "pytest", f"benchmarks/test_bench_{suite}.py", "-q", "--benchmark-only",
                     f"--benchmark-json={results / f'{suite}.json'}"])
    cmds.append([sys.executable, "benchmarks/report.py", *(str(results / f"{s}.json") for s in suites),
                 "--out-dir", str(results)])
    return cmds


def _cmd_bench(args: argparse.Namespace) -> int:
    root = (args.root or Path(__file__).resolve().parent.parent).resolve()
    bench = root / "benchmarks"
    if not (bench / "report.py").is_file():
        raise CommandError(f"no benchmarks/ folder with report.py in {root}: the benchmark suites ship with the "
                           "source repository, not the installed package. Run isnet bench from a clone of "
                           "isnet-kernels (pip install -e '.[test]'), or pass --root REPO")
    found = sorted(p.stem.removeprefix("test_bench_") for p in bench.glob("test_bench_*.py"))
    suites = [s.strip() for s in args.suites.split(",") if s.strip()] if args.suites else found
    unknown = [s for s in suites if s not in found]
    if unknown or not suites:
        raise CommandError(f"unknown suite(s) {unknown or args.suites!r}: {bench} has the suites "
                           f"{', '.join(found) or '(none)'}; pass a comma-separated subset of them to --suites")
    if not args.dry_run and importlib.util.find_spec("pytest_benchmark") is None:
        raise CommandError("pytest-benchmark is not installed; pip install pytest-benchmark (or pip install -e "
                           "'.[test]')")
    results = args.results or (bench / "results" / "quick" if args.quick else bench / "results")
    results = results if results.is_absolute() else (Path.cwd() / results)
    env = {**os.environ, **(QUICK_BENCH_ENV if args.quick else {})}
    cmds = bench_commands(root, suites, results)
    if args.dry_run:
        prefix = " ".join(f"{k}={v}" for k, v in QUICK_BENCH_ENV.items()) + " " if args.quick else ""
        for cmd in cmds:
            print(f"(cd {root} && {prefix}{' '.join(cmd)})")
        return 0
    results.mkdir(parents=True, exist_ok=True)
    for cmd in cmds:
        print("+", " ".join(cmd), flush=True)
        done = subprocess.run(cmd, cwd=root, env=env)
        if done.returncode != 0:
            raise CommandError(f"{' '.join(cmd[1:4])} failed with exit status {done.returncode} (output above)")
    print(f"benchmark JSON and tables in {results}")
    return 0


COMMANDS = {"data": _cmd_data, "train": _cmd_train, "eval": _cmd_eval, "explain": _cmd_explain,
            "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``isnet`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from .data import DataError
    from .train import TrainError

    parser = _build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        return COMMANDS[args.command](args)
    except (CommandError, TrainError, DataError) as exc:
        rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
        where = f" (rank {rank})" if rank != "0" else ""
        print(f"isnet {args.command}{where}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
