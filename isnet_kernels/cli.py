"""The ``isnet`` command line: make a data set, train, evaluate, explain one image, run the benchmarks.

::

    isnet data biased-multilabel ROOT [--labels 5] [--size 40] ... (multi-label: writes ROOT/manifest.csv)
    isnet data biased-digits ROOT [--size 32] [--seed 0] [--per-class 300] [--per-class-val 20] [--per-class-test 50]
        [--overwrite] [--yes]
    isnet data import {oxford-pet,cub,waterbirds} ROOT OUT.csv [--segmentations DIR] [--overwrite]
    isnet data inspect DATA [--splits ...] [--figure fig.png] [--mask-foreground 1] [--mask-threshold T] [--mask-invert]
    isnet train --data ROOT --out RUN_DIR [--arch small] [--variant selective] [--epochs 10] [--batch-size 32] ...
    isnet train --out RUN_DIR --resume [--epochs N]
    isnet eval --run RUN_DIR [--data ROOT] [--splits test_a test_b ...]
    isnet explain --run RUN_DIR IMAGE [--mask MASK] [--target CLASS] --out fig.png
    isnet bench [--quick] [--suites explain,ops,training] [--results DIR] [--dry-run]

Also ``python -m isnet_kernels`` or ``python -m isnet_kernels.cli``; several processes with
``torchrun --nproc_per_node=N -m isnet_kernels.cli train ...`` (``--batch-size`` is the global batch).
Exit status: 0 done, 2 bad input (the message names the problem and the fix), 130 training interrupted by Ctrl-C
and 143 by SIGTERM (128 + the signal's number; a checkpoint was saved, ``--resume`` continues).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ISNetError

#: Environment of ``isnet bench --quick``: fewer rounds, one model, no memory probe.
QUICK_BENCH_ENV = {"BENCH_ROUNDS": "2", "BENCH_TRAIN_ROUNDS": "2", "BENCH_OP_ROUNDS": "3", "BENCH_MEMORY": "0",
                   "BENCH_MODELS": "resnet18"}


class CommandError(ISNetError, ValueError):
    """Bad input to a command: printed as ``isnet <command>: error: <message>``, exit status 2."""


#: Set to 1 to see the traceback of an unexpected error instead of its one-line message.
TRACEBACK_ENV = "ISNET_TRACEBACK"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``isnet train: error: ... (see isnet train --help)``)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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


def config_flag(f: dataclasses.Field) -> str:
    """The ``isnet train`` flag of a :class:`~isnet_kernels.train.TrainConfig` field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str:
    from .train.config import default_of

    value = default_of(f)
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if isinstance(value, bool) or value in (None, {}, ""):
        return "off" if isinstance(value, bool) or f.name == "deep_supervision" else "none"
    return str(value)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`~isnet_kernels.train.TrainConfig` field, from the field's type and metadata (help,
    choices, flag): a setting added to the configuration appears here by being added once. Values are checked by
    :meth:`TrainConfig.validate`, not here."""
    from .train.config import TrainConfig, default_of

    scalar = {"str": str, "int": int, "float": float}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        kwargs: dict[str, Any] = {"dest": f.name, "help": f"{meta['help']} (default: {_default_text(f)})"}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("choices") is not None:
            kwargs["choices"] = list(meta["choices"])
        kind = str(f.type).split(" | ")
        if f.name == "out":
            kwargs.update(required=True, help=f"{meta['help']} (required)")
        if f.name == "model_kwargs":
            kwargs.update(type=_model_arg, action="append")
        elif f.name == "deep_supervision":
            kwargs.update(nargs="*")
        elif f.name == "device":
            kwargs.update(type=_device)
        elif kind[0] == "list[float]":  # --mean 0.485 0.456 0.406
            kwargs.update(type=float, nargs="+")
        elif kind == ["bool"]:  # a flag that turns the setting off (--quiet: progress=False), or on (--mask-invert)
            kwargs.update(action="store_true" if default_of(f) is False else "store_false")
        else:
            kwargs["type"] = scalar[kind[0]]
        parser.add_argument(config_flag(f), **kwargs)


def add_mask_options(parser: argparse.ArgumentParser, default: str = "") -> None:
    """``--mask-foreground``, ``--mask-threshold``, ``--mask-invert`` (:mod:`isnet_kernels.data.masks`)."""
    parser.add_argument("--mask-foreground", metavar="VALUES", help="mask pixel values that are foreground, e.g. 1 "
                        f"for an Oxford-IIIT Pet trimap{default or ' (default: every nonzero pixel)'}")
    parser.add_argument("--mask-threshold", type=float, metavar="T", help="soft or lossy masks: foreground where the "
                        f"grey level in [0, 1] is >= T{default}")
    parser.add_argument("--mask-invert", action="store_true", default=None, help="the masks mark the background"
                        f"{default}")


def _mask_convention(args: argparse.Namespace, base: Any = None):
    """The mask convention of the command's mask options; those not given keep ``base``'s (None: the default)."""
    from .data.masks import MaskConvention

    base = base or MaskConvention()
    given = args.mask_foreground is not None or args.mask_threshold is not None or args.mask_invert
    if not given:
        return base
    return MaskConvention.from_options(args.mask_foreground, args.mask_threshold, bool(args.mask_invert))


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isnet", description="ISNet training, evaluation and LRP heatmaps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # data
    data = sub.add_parser("data", help="write a data set")
    data_sub = data.add_subparsers(dest="dataset", metavar="DATASET")
    data_sub.required = True
    for name, text, size in (("biased-digits", "handwritten digits with a class-coding background artefact", 32),
                             ("biased-tags", "digits over photographic texture with a class-coding text tag in the "
                              "background (the bias of burnt-in labels)", 40),
                             ("biased-scenes", "digits on real photographs, one scene per class behind most training "
                              "images (the whole background is the shortcut, as in Waterbirds)", 40),
                             ("biased-multilabel", "one or two digits per image, its labels their classes, a "
                              "label-coding artefact per label in the border (multi-label; writes ROOT/manifest.csv)",
                              40)):
        ds = data_sub.add_parser(name, help=text)
        ds.add_argument("root", type=Path, help="folder to write (images/, masks/, info.json)")
        ds.add_argument("--size", type=int, default=size, help=f"image side in pixels (default {size})")
        ds.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
        counts = (150, 10, 30) if name == "biased-multilabel" else (300, 20, 50)
        unit = " (a split holds PER_CLASS x LABELS images)" if name == "biased-multilabel" else ""
        ds.add_argument("--per-class", type=int, default=counts[0], help=f"training images per class{unit} "
                        f"(default {counts[0]})")
        ds.add_argument("--per-class-val", type=int, default=counts[1], help="validation images per class "
                        f"(default {counts[1]})")
        ds.add_argument("--per-class-test", type=int, default=counts[2], help="images per class of each test split "
                        f"(default {counts[2]})")
        ds.add_argument("--no-train-clean", dest="train_clean", action="store_false",
                        help="do not write train_clean (the training images without the artefact)")
        ds.add_argument("--overwrite", action="store_true", help="replace a data set written there before")
        ds.add_argument("--yes", action="store_true", help="write the set even if it has more than 200,000 files "
                        "or exceeds the disk's free space (refused otherwise, with the estimate)")
        ds.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "biased-digits":
            ds.add_argument("--noise", type=float, default=0.0, help="background uniform in [0, NOISE] instead of "
                            "black (default 0)")
        if name == "biased-multilabel":
            ds.add_argument("--labels", type=int, default=5, help="number of labels, the digit classes 0 .. LABELS-1 "
                            "(4 to 10, default 5)")
        if name == "biased-scenes":
            ds.add_argument("--bias", type=float, default=0.95, help="fraction of the train and val images of a "
                            "class drawn on its own scene (default 0.95)")
            ds.add_argument("--contrast", type=float, default=1.0, help="the digit's strength over the scene, in "
                            "(0, 1] (default 1)")
            ds.add_argument("--scene", type=float, default=0.85, help="the scene's range [0, SCENE], in (0, 1] "
                            "(default 0.85)")
            ds.add_argument("--photo-seed", type=int, default=None, help="seed of which photograph belongs to which "
                            "class (default: --seed); another value gives a set of this kind with other scenes")

    imp = data_sub.add_parser("import", help="write a manifest (CSV) from a public data set's own layout")
    imp_sub = imp.add_subparsers(dest="source", metavar="SOURCE")
    imp_sub.required = True
    for name, text in (("oxford-pet", "Oxford-IIIT Pet: images/, annotations/trimaps/, annotations/trainval.txt and "
                        "test.txt"),
                       ("cub", "CUB-200-2011: images.txt, image_class_labels.txt, train_test_split.txt, "
                        "bounding_boxes.txt, classes.txt, images/ (and the segmentations)"),
                       ("waterbirds", "Waterbirds: metadata.csv and its images, with CUB's segmentations as masks")):
        ip = imp_sub.add_parser(name, help=text)
        ip.add_argument("root", type=Path, help="the data set's folder, as it ships")
        ip.add_argument("out", type=Path, help="the manifest to write (a .csv file; paths in it are relative to it)")
        if name in ("cub", "waterbirds"):
            ip.add_argument("--segmentations", type=Path, help="CUB's segmentations folder (default: ROOT/"
                            "segmentations or a segmentations folder beside ROOT)")
        if name == "cub":
            ip.add_argument("--boxes-only", action="store_true", help="boxes as the foreground, no segmentations")
        if name in ("oxford-pet", "cub"):
            ip.add_argument("--val-fraction", type=float, default=0.1, help="share of each class of the training "
                            "split held out as val (default 0.1)")
            ip.add_argument("--seed", type=int, default=0, help="seed of the val draw (default 0)")
        ip.add_argument("--overwrite", action="store_true", help="replace the manifest if it exists")
    ins = data_sub.add_parser("inspect", help="images per class, sizes, mask statistics and a figure of a data set")
    ins.add_argument("data", help="data set folder or manifest FILE.csv")
    ins.add_argument("--splits", nargs="+", help="splits to inspect (default: all)")
    ins.add_argument("--figure", type=Path, help="PNG of a few images of the first split with their masks outlined")
    ins.add_argument("--images", type=int, default=8, help="images in the figure (default 8)")
    ins.add_argument("--mask-check", type=float, default=0.05, help="share of all-foreground or all-background "
                     "masks reported as a problem (default 0.05, as isnet train)")
    add_mask_options(ins)
    ins.add_argument("--quiet", action="store_true", help="no progress bar")

    # train: generated from TrainConfig's fields; every option defaults to "not given", so that a resumed run can
    # tell what was asked to change
    tr = sub.add_parser("train", help="train a classifier or an ISNet", argument_default=argparse.SUPPRESS)
    add_config_options(tr)
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")

    # eval
    ev = sub.add_parser("eval", help="accuracy and background relevance of a run on test splits")
    ev.add_argument("--run", required=True, type=Path, help="run directory of isnet train")
    ev.add_argument("--data", help="data set folder (default: the run's)")
    ev.add_argument("--splits", nargs="+", help="splits to evaluate (default: every test_* split)")
    ev.add_argument("--checkpoint", default="best", help="best (default: best.pt, else last.pt), last, or a file "
                    "name in the run directory")
    ev.add_argument("--batch-size", type=int, help="default: the run's")
    ev.add_argument("--device", type=_device, default="cpu")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the AUROC confidence "
                    "interval (default 1000; 0 = none)")
    add_mask_options(ev, " (default: the run's)")
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
    parser.commands = {"train": tr, "eval": ev, "explain": ex, "bench": be,  # type: ignore[attr-defined]
                       **{f"data {name}": p for name, p in data_sub.choices.items()},
                       **{f"data import {name}": p for name, p in imp_sub.choices.items()}}
    return parser


# --- messages in the command line's terms ------------------------------------------------------------------------
#: Python parameter names of the functions a command calls that differ from the command's option (its ``dest``).
PARAMETER_ALIASES = {"data": {"per_class_train": "per_class"}, "eval": {"which": "checkpoint", "root": "data"},
                     "explain": {"which": "checkpoint"}}
_VALUE = r"""(\([^)]*\)|\[[^\]]*\]|'[^']*'|"[^"]*"|[^\s,;:)]+)"""


def command_flags(parser: argparse.ArgumentParser, aliases: dict[str, str] | None = None
                  ) -> dict[str, argparse.Action]:
    """The options of a (sub)command by the Python name they stand for: their ``dest``, and the ``aliases``."""
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    for name, dest in (aliases or {}).items():
        if dest in actions:
            actions[name] = actions[dest]
    return actions


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def command_line_message(message: str, flags: dict[str, argparse.Action], params: Sequence[str] = ()) -> str:
    """A package message in the command line's terms: a Python argument ``name=value`` of an option becomes the
    option (``overwrite=True``: ``--overwrite``, ``channels=1``: ``--channels 1``, ``size=(H, W)``: ``--size
    SIZE``), and the names of the parameters the error is about (``params``), and every name with an underscore
    (unambiguous: ``batch_size``, ``model_kwargs``), become the option's flag."""

    def assign(action: argparse.Action, value: str) -> str:
        flag = _flag(action)
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false: the flag sets const
            return flag if value == str(action.const) else f"no {flag}"
        if value[:1] in "([{":
            return f"{flag} {action.metavar or action.dest.upper()}"
        return f"{flag} {value.strip(chr(39) + chr(34))}"

    for name, action in sorted(flags.items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"(?<![\w.-]){re.escape(name)}={_VALUE}", lambda m, a=action: assign(a, m.group(1)),
                         message)
        if "_" in name or name in params:
            message = re.sub(rf"(?<![\w.'\"-]){re.escape(name)}(?![\w'\"=(])", _flag(action), message)
    return message


# --- commands ----------------------------------------------------------------------------------------------------
def _cmd_data_import(args: argparse.Namespace) -> int:
    from .data.importers import import_dataset

    options = {k: getattr(args, k) for k in ("segmentations", "boxes_only", "val_fraction", "seed")
               if getattr(args, k, None) is not None}
    info = import_dataset(args.source, args.root, args.out, overwrite=args.overwrite, **options)
    counts = ", ".join(f"{split} {n}" for split, n in info["counts"].items())
    groups = f", groups {', '.join(info['groups'])}" if info["groups"] else ""
    print(f"wrote {info['manifest']}: {info['images']} images, {info['classes']} classes; images per split: "
          f"{counts}{groups}")
    print(f"inspect with: isnet data inspect {info['manifest']} {info['mask_option'].split(' (')[0]}")
    print(f"train with: isnet train --data {info['manifest']} --size 224 --channels 3 --out runs/NAME "
          f"{info['mask_option'].split(' (')[0]}".rstrip())
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import format_inspection, inspect_data

    result = inspect_data(args.data, args.splits, mask_convention=_mask_convention(args), max_share=args.mask_check,
                          figure=args.figure, images=args.images, progress=not args.quiet)
    print(format_inspection(result))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .data import write_biased_digits, write_biased_multilabel, write_biased_scenes, write_biased_tags

    if args.dataset in ("import", "inspect"):
        return {"import": _cmd_data_import, "inspect": _cmd_data_inspect}[args.dataset](args)

    writer = {"biased-digits": write_biased_digits, "biased-tags": write_biased_tags,
              "biased-scenes": write_biased_scenes, "biased-multilabel": write_biased_multilabel}[args.dataset]
    extra = {"biased-digits": {"noise": getattr(args, "noise", 0.0)}, "biased-tags": {},
             "biased-multilabel": {"labels": getattr(args, "labels", 5)},
             "biased-scenes": {"bias": getattr(args, "bias", 0.95), "photo_seed": getattr(args, "photo_seed", None),
                               "contrast": getattr(args, "contrast", 1.0), "scene": getattr(args, "scene", 0.85)}}
    try:
        info = writer(args.root, size=args.size, per_class_train=args.per_class, per_class_val=args.per_class_val,
                      per_class_test=args.per_class_test, seed=args.seed, progress=not args.quiet,
                      overwrite=args.overwrite, train_clean=args.train_clean,
                      **({"max_files": None} if args.yes else {}), **extra[args.dataset])
    except ISNetError:
        raise
    except ValueError as exc:  # a value another library refused
        raise CommandError(str(exc)) from None
    counts = ", ".join(f"{split} {n}" for split, n in info["counts"].items())
    print(f"wrote {args.dataset.replace('-', ' ')} to {info['root']}: {info['size']}x{info['size']} px, "
          f"{len(info['classes'])} classes, seed {info['seed']}; images per split: {counts}")
    data = Path(info["root"]) / info["manifest"] if "manifest" in info else info["root"]
    print(f"train with: isnet train --data {data} --out runs/isnet")
    return 0


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig, load_checkpoint
    from .train.checkpoint import LAST

    given = {k: v for k, v in vars(args).items() if k not in ("command", "resume")}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    if "deep_supervision" in given:
        names = list(given["deep_supervision"])
        given["deep_supervision"] = {("off",): False, ("auto",): "auto", (): True}.get(tuple(names), names)
    if "clip" in given and given["clip"] == 0:
        given["clip"] = None
    if getattr(args, "resume", False):
        last = Path(given["out"]) / LAST
        if not last.is_file():
            where = Path(given["out"]).resolve()
            state = "holds no checkpoint" if where.is_dir() else "does not exist"
            raise CommandError(f"cannot resume: the run directory {given['out']} ({where}) {state}; start the run "
                               f"without --resume, or pass as --out the folder of a run that saved {LAST}")
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
        return 128 + int(result.signal or 2)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them
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
    from .train.evaluate import write_eval

    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    if args.bootstrap < 0:
        raise CommandError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    given = args.mask_foreground is not None or args.mask_threshold is not None or args.mask_invert
    out = evaluate_run(args.run, args.data, args.splits, which=args.checkpoint, batch_size=args.batch_size,
                       device=args.device, progress=not args.quiet, write=False, bootstrap=args.bootstrap,
                       mask_convention=_mask_convention(args) if given else None)
    # printed first: a write that fails (a read-only run directory, a full disk) loses nothing
    print(f"{out['run']} ({out['checkpoint']}, epoch {out['epoch']}, {out['arch']}, variant {out['variant']}) on "
          f"{out['data']}:")
    multilabel = out.get("task") == "multilabel"
    print(markdown_table(out["splits"], out["classes"] if multilabel else None), end="")
    if multilabel:
        print("exact match: images whose every label is right (a label present where its sigmoid exceeds 0.5); "
              "label accuracy: the mean over labels; background relevance: share of |LRP| of the highest logit "
              "outside the mask; AUROC per label and macro, with its bootstrap interval; mAP: mean average "
              "precision.", flush=True)
    else:
        print("background relevance: share of |LRP| of the predicted class outside the mask; AUROC: one-vs-rest, "
              "macro, with its bootstrap interval; worst group / average group: accuracy over the data set's "
              "groups.", flush=True)
    try:
        json_path, md_path = write_eval(out)
    except ISNetError as exc:
        raise CommandError(f"{_one_line(exc)} (the results are printed above)") from None
    print(f"Written to {json_path} and {md_path}" + ("" if multilabel else ", confusion matrices beside them "
                                                      f"({json_path.stem}-confusion-<split>.png)"))
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
    """Run the ``isnet`` command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Every error of the package (:class:`~isnet_kernels.ISNetError`: bad settings, data, layers, a backend that
    cannot run) is one line on stderr and exit status 2; an unexpected error is one line and exit status 1
    (``ISNET_TRACEBACK=1`` shows its traceback); Ctrl-C outside training exits with 130.
    """
    parser = _build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
    where = f" (rank {rank})" if rank != "0" else ""
    try:
        return COMMANDS[args.command](args)
    except ISNetError as exc:
        message = _in_command_terms(exc, args, parser.commands)
        print(f"isnet {args.command}{where}: error: {_one_line(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"isnet {args.command}{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"isnet {args.command}{where}: error: {type(exc).__name__}: {_one_line(exc)} (set {TRACEBACK_ENV}=1 "
              "for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def _in_command_terms(exc: ISNetError, args: argparse.Namespace,
                      commands: dict[str, argparse.ArgumentParser]) -> str:
    """The message of ``exc`` naming the command's flags (:func:`command_line_message`)."""
    key = (f"data import {args.source}" if getattr(args, "dataset", None) == "import" else f"data {args.dataset}") \
        if args.command == "data" else args.command
    parser = commands.get(key)
    if parser is None:
        return str(exc)
    return command_line_message(str(exc), command_flags(parser, PARAMETER_ALIASES.get(args.command)),
                                getattr(exc, "params", ()))


if __name__ == "__main__":
    sys.exit(main())
