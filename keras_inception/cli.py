"""``keras-inception``: convert slim checkpoints, classify images, export, train, evaluate.

The commands only parse arguments and call the library; every choice comes from it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import sys
from typing import TYPE_CHECKING

from keras_inception.core import cpu, registry
from keras_inception.deploy import export
from keras_inception.train import evaluation, training

if TYPE_CHECKING:
    import keras

DEFAULT_MODEL = "inception_v4"
MODEL_NAMES = sorted(registry.FAMILIES)
RANDOM = ("none", "random")  # --weights values for random initialisation
WEIGHTS_HELP = "with a model name: a tag, a .keras / .weights.h5 file or a slim checkpoint, or none (random)"


def cmd_convert(args) -> int:
    from keras_inception.deploy.convert import convert

    if args.output_option and args.output:
        raise ValueError("give the output once: as OUTPUT or as -o/--output")
    if args.source in registry.pretrained_tags() and not args.model:
        raise ValueError(f"{args.source!r} is a tag: say which model with --model (one of {MODEL_NAMES})")
    result = convert(
        args.source,
        args.output_option or args.output,
        family=args.model,
        classes=args.classes,
        aux_logits=args.aux_logits,
        use_ema=not args.no_ema,
        version=args.version,
    )
    print(result.summary())
    return 0 if result.output else 1


def _say(line: str) -> None:
    """A progress line: stderr, so that stdout holds only the results."""
    print(line, file=sys.stderr, flush=True)


def load_model(source: str, weights: str | None) -> keras.Model:
    """A network by name with ``weights`` (default ``imagenet``; ``none`` or ``random``: random
    initialisation), or a model file (holding its own weights); says which weights on stderr."""
    from keras_inception import models

    if source not in registry.FAMILIES:
        model = models.create(source, weights=weights)
        _say(f"weights: those saved in {source}")
        return model
    weights = weights or "imagenet"
    tags = registry.pretrained_tags(source)
    if weights.lower() not in RANDOM and weights not in tags and not models.is_path(weights):
        raise ValueError(
            f"{source} has no weights {weights!r}: give {f'one of {tags}, ' if tags else ''}a .keras / "
            ".weights.h5 file, a slim checkpoint, or none (random initialisation)"
        )
    if weights.lower() in RANDOM:
        model = models.create(source, weights=None)
        _say("weights: none, random initialisation (--weights none; give a tag or a file to load some)")
    else:
        model = models.create(source, weights=weights)
        if weights in tags:
            archive = registry.pretrained_config(source, weights).archive
            _say(f"weights: {weights} ({source}, TF-slim checkpoint {archive})")
        else:
            _say(f"weights: {weights}")
    return model


def cmd_predict(args) -> int:
    from keras_inception.deploy import predict

    model = load_model(args.model, args.weights)
    results, failures = predict.classify(
        model,
        args.images,
        batch_size=args.batch_size,
        top=args.top,
        fold_batchnorm=not args.no_fold_batchnorm,
    )
    for path, top in results:
        print(f"{path}:")
        for name, score in top:
            print(f"  {score:7.2%}  {name}")
    for path, reason in failures:
        print(f"cannot read image {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_export(args) -> int:
    export.check_options(args.format, args.output, args.quantize, args.calibration, args.precision)
    model = load_model(args.source, args.weights)
    result = export.export_model(
        model,
        args.format,
        args.output,
        args.quantize,
        args.calibration,
        args.version,
        fold_batchnorm=not args.no_fold_batchnorm,
        precision=args.precision,
    )
    print(f"exported {model.name} -> {result.path} ({result.size_bytes / 1e6:.1f} MB)")
    figures = ", ".join(f"{k} {v:.6g}" for k, v in result.agreement.items())
    print(f"  against Keras: {figures}")
    return 0


def _open(spec: str, args, split: str):
    from keras_inception.input import pipelines as data

    return data.open_source(
        spec,
        split,
        getattr(args, "data_dir", None),
        num_classes=getattr(args, "num_classes", None),
        label_offset=getattr(args, "label_offset", 0),
        manual_dir=getattr(args, "manual_dir", None),
        on_error=args.on_error,
    )


def _run_command(args, work, total: int) -> int:
    """Run ``work()`` (a training run into ``args.output``), its progress on stderr: 0, or 1 when
    it diverged, or 130 when interrupted, each said in one line (after a line break: a
    progress bar may have been cut short)."""
    from keras_inception.train import runs

    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras's progress bars
            work()
    except runs.DivergedError as error:
        option = "--" + error.setting.split(".")[-1].replace("_", "-")
        print(f"\n{error.message(option)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = runs.finished_epochs(args.output)
        print(
            f"\ninterrupted: {done} of {total} epochs are saved in {args.output}; "
            f"rerun the same command to resume from epoch {done + 1}",
            file=sys.stderr,
        )
        return 130
    return 0


def cmd_train(args) -> int:
    cpu.check_precision(args.mixed_precision or "float32")  # bfloat16 without bfloat16 units: warned once
    recipe = training.Recipe.slim(
        learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs,
        clipnorm=args.clipnorm,
        ema_decay=None if args.no_ema else args.ema_decay,
        label_smoothing=args.label_smoothing,
        weight_decay=args.weight_decay,
        weight_decay_mode=args.weight_decay_mode,
    )

    def work():
        from keras_inception.train import runs

        # the folder is locked before the data are read, so a second run is refused at once
        # (multi-worker runs write no run folder: each worker its own backups)
        multi_worker = args.strategy == "multi-worker"
        with contextlib.nullcontext() if multi_worker else runs.locked_folder(args.output):
            train_source = _open(args.data, args, "train")
            val_source = _open(args.val_data, args, args.val_split) if args.val_data else None
            training.train_network(
                args.model,
                train_source,
                val_source,
                args.output,
                epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                batch_size=args.batch_size,
                image_size=args.image_size,
                recipe=recipe,
                strategy=args.strategy,
                tpu=args.tpu,
                aux_logits=args.aux_logits,
                sync_bn=args.sync_bn,
                mixed_precision=args.mixed_precision,
                xla=args.xla,
                width=args.width,
                depths=args.depths,
                seed=args.seed,
                remat=not args.no_remat,
            )

    code = _run_command(args, work, args.epochs)
    if code == 0:
        print(f"wrote {os.path.join(args.output, 'final.keras')}")
    return code


def cmd_finetune(args) -> int:
    from keras_inception.train.finetune import finetune

    summary = {}

    def work():
        summary.update(
            finetune(
                args.data,
                args.model,
                weights=None if args.weights.lower() == "none" else args.weights,
                output_dir=args.output,
                epochs=args.epochs,
                fine_tune_epochs=args.fine_tune_epochs,
                unfreeze_from=args.unfreeze_from,
                learning_rate=args.learning_rate,
                fine_tune_learning_rate=args.fine_tune_learning_rate,
                batch_size=args.batch_size,
                image_size=args.image_size,
                validation_split=args.validation_split,
                validation_dir=args.val_data,
                seed=args.seed,
                on_error=args.on_error,
            )
        )

    code = _run_command(args, work, args.epochs + args.fine_tune_epochs)
    if code == 0:
        top5 = summary["history"].get("val_top5")
        also = f", top-5 {top5[summary['best_epoch']]:.2%}" if top5 else ""
        print(
            f"best validation top-1 {summary['best']:.2%}{also} (epoch {summary['best_epoch'] + 1}); "
            f"model: {summary['best_model']}"
        )
    return code


def cmd_evaluate(args) -> int:
    source = _open(args.data, args, args.split)
    loaded = [load_model(m, args.weights if m in registry.FAMILIES else None) for m in args.models]
    size = loaded[0].input_shape[1] or registry.family(DEFAULT_MODEL).default_size
    print(f"{'+'.join(m.name for m in loaded)} on {args.data}")
    print("| crops | images | top-1 error % | top-5 error % |")
    print("| --- | --- | --- | --- |")
    results = []
    for scheme in args.crops:
        result = evaluation.evaluate(
            loaded,
            source.dataset,
            source.class_names,
            scheme,
            size,
            args.limit,
            total=source.num_examples,
            batch_size=args.batch_size,
            fold_batchnorm=not args.no_fold_batchnorm,
        )
        results.append(result)
        print(f"| {scheme} | {result.images} | {result.top1_error:.2f} | {result.top5_error:.2f} |")
    print("most confused (true -> predicted, count):")
    for true, predicted, count in results[-1].confused:
        print(f"  {true} -> {predicted}: {count}")
    return 0


def _data_options(p: argparse.ArgumentParser, tfrecords: bool = True) -> None:
    if tfrecords:
        p.add_argument("--data-dir", help="TFDS data_dir (for tfds:NAME data)")
        p.add_argument("--manual-dir", help="TFDS manual_dir (imagenet2012)")
        p.add_argument("--num-classes", type=int, help="classes of TFRecord data")
        p.add_argument(
            "--label-offset", type=int, default=0, help="added to TFRecord labels (slim ImageNet: -1)"
        )
    p.add_argument(
        "--on-error",
        choices=("skip", "raise"),
        default="skip",
        help="unreadable image files in a folder: skip and list them, or stop with an error",
    )


def _fold_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--no-fold-batchnorm",
        action="store_true",
        help=f"{what} the model as built, BatchNorm layers and all, instead of its inference form "
        "(each BatchNorm folded into the convolution before it)",
    )


def _training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, default=299, help="input side in pixels")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size")
    p.add_argument("--seed", type=int, default=0, help="random seed of shuffling, augmentation and weights")


def parser() -> argparse.ArgumentParser:
    fmt = DefaultsFormatter
    p = Parser(prog="keras-inception", description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser(
        "convert",
        help="convert a TF-slim checkpoint to .keras, .weights.h5 or a SavedModel",
        formatter_class=fmt,
    )
    c.add_argument(
        "source", help="checkpoint (V1 file or V2 prefix), official .tar.gz, or a tag like imagenet"
    )
    c.add_argument(
        "output",
        nargs="?",
        help="FILE.keras, FILE.weights.h5 or a SavedModel folder written to <folder>/<version> "
        "(default saved_models/<model>)",
    )
    c.add_argument("-o", "--output", dest="output_option", help="the output, as an option")
    c.add_argument("--model", choices=MODEL_NAMES, help="the family: needed with a tag, checked otherwise")
    c.add_argument(
        "--classes", type=int, choices=(1000, 1001), default=1000, help="1000 drops slim's background class 0"
    )
    c.add_argument("--aux-logits", action="store_true", help="convert the auxiliary head too")
    c.add_argument("--no-ema", action="store_true", help="take raw variables, not their moving averages")
    c.add_argument("--version", type=int, help="SavedModel version folder (default: the next free one)")
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("predict", help="top ImageNet classes of images", formatter_class=fmt)
    r.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP) or folders of them")
    r.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"a network ({', '.join(MODEL_NAMES)}) or a .keras file (a fine-tuned model, with its classes)",
    )
    r.add_argument("--weights", help=f"{WEIGHTS_HELP} (default: imagenet)")
    r.add_argument("--top", type=int, default=5, help="classes shown per image")
    r.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    _fold_option(r, "run")
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser(
        "export", help="SavedModel for TF Serving, TFLite / LiteRT, ONNX, or OpenVINO", formatter_class=fmt
    )
    e.add_argument("source", help="model name (with --weights), .keras file, or slim checkpoint / archive")
    e.add_argument("--weights", help=f"{WEIGHTS_HELP} (default: imagenet)")
    e.add_argument("--format", choices=export.FORMATS, default="savedmodel", help="what to write")
    e.add_argument("--quantize", choices=export.QUANTIZATIONS, default="none", help="TFLite quantization")
    e.add_argument(
        "--precision",
        choices=export.OPENVINO_PRECISIONS,
        help="OpenVINO precision (default float32): bfloat16 is a compile hint recorded in the model, "
        "int8 is NNCF quantization calibrated on --calibration",
    )
    e.add_argument("--calibration", help="image folder: int8 calibration, and the images the check runs on")
    e.add_argument(
        "--output",
        help="SavedModel folder (versioned) or file; OpenVINO: FILE.xml, weights in FILE.bin "
        "(default: under saved_models/)",
    )
    e.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    _fold_option(e, "export (and check against)")
    e.set_defaults(func=cmd_export)

    t = sub.add_parser("train", help="train from scratch with the paper's recipe", formatter_class=fmt)
    t.add_argument("--data", required=True, help="image folder, TFRecord glob, or tfds:NAME")
    t.add_argument("--val-data", help="validation data (same forms)")
    t.add_argument("--val-split", default="validation", help="TFDS split of --val-data")
    t.add_argument("--model", choices=MODEL_NAMES, default=DEFAULT_MODEL, help="the network")
    t.add_argument("--epochs", type=int, default=100, help="training epochs")
    t.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: dataset size / batch)")
    t.add_argument("--output", default="train_output", help="folder for checkpoints, history and models")
    t.add_argument(
        "--strategy", choices=training.STRATEGIES, default="one-device", help="tf.distribute strategy"
    )
    t.add_argument("--tpu", help="TPU name or address for --strategy tpu")
    t.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over the global batch")
    t.add_argument("--mixed-precision", choices=("bfloat16", "float16"), help="mixed-precision policy")
    t.add_argument("--xla", action="store_true", help="jit_compile the training step")
    t.add_argument(
        "--no-remat",
        action="store_true",
        help="keep the stem's activations for the backward pass instead of recomputing them "
        "(more memory, less compute)",
    )
    t.add_argument("--aux-logits", action="store_true", help="train the aux head (loss weight 0.4)")
    t.add_argument("--learning-rate", type=float, default=0.045, help="initial learning rate")
    t.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up epochs")
    t.add_argument("--clipnorm", type=float, help="clip each gradient to this norm")
    t.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing")
    t.add_argument("--weight-decay", type=float, default=4e-5, help="weight decay")
    t.add_argument(
        "--weight-decay-mode",
        choices=training.WEIGHT_DECAY_MODES,
        default="l2",
        help="l2: slim's L2 loss; decoupled: Keras's decoupled weight decay",
    )
    t.add_argument(
        "--ema-decay",
        type=float,
        default=0.9999,
        help="parameter moving-average decay (slim's warm-up applies)",
    )
    t.add_argument("--no-ema", action="store_true", help="no moving average of the weights")
    t.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    t.add_argument("--depths", type=int, nargs=3, help="blocks per stage (default: the published network's)")
    _data_options(t)
    _training_options(t)
    t.set_defaults(func=cmd_train)

    f = sub.add_parser(
        "finetune", help="transfer learning on an image folder (one subfolder per class)", formatter_class=fmt
    )
    f.add_argument("--data", required=True, help="image folder, one subfolder per class")
    f.add_argument("--val-data", help="validation image folder with the same classes (instead of a split)")
    f.add_argument("--model", choices=MODEL_NAMES, default=DEFAULT_MODEL, help="the network")
    f.add_argument("--weights", default="imagenet", help="a tag, a weights file, or none (random base)")
    f.add_argument("--output", default="finetune_output", help="folder for best.keras and the history")
    f.add_argument("--epochs", type=int, default=5, help="epochs with the base frozen")
    f.add_argument("--fine-tune-epochs", type=int, default=0, help="then epochs with the top blocks unfrozen")
    f.add_argument("--unfreeze-from", default="Mixed_7a", help="first block made trainable")
    f.add_argument("--learning-rate", type=float, default=1e-3, help="Adam rate of the first phase")
    f.add_argument(
        "--fine-tune-learning-rate", type=float, default=1e-4, help="Adam rate of the second phase"
    )
    f.add_argument(
        "--validation-split", type=float, default=0.1, help="share of images held out (without --val-data)"
    )
    _data_options(f, tfrecords=False)
    _training_options(f)
    f.set_defaults(func=cmd_finetune)

    v = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error for 1, 12 and 144 crops, single models or ensembles",
        formatter_class=fmt,
    )
    v.add_argument("--data", required=True, help="image folder, TFRecord glob, or tfds:NAME")
    v.add_argument("--split", default="validation", help="TFDS split")
    v.add_argument(
        "--model",
        "--models",
        dest="models",
        nargs="+",
        required=True,
        help="model names (with --weights), .keras files or checkpoints; several: an ensemble",
    )
    v.add_argument("--weights", help=f"{WEIGHTS_HELP} (default: imagenet)")
    v.add_argument(
        "--crops", type=int, nargs="+", default=[1], choices=evaluation.CROP_SCHEMES, help="crop schemes"
    )
    v.add_argument("--limit", type=int, help="evaluate the first N images")
    v.add_argument("--batch-size", type=int, default=48, help="crops per forward pass")
    _fold_option(v, "evaluate")
    _data_options(v)
    v.set_defaults(func=cmd_evaluate)

    p.commands = sub.choices
    return p


def parse(argv: list[str], p: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command's arguments."""
    p = p or parser()
    args, extra = p.parse_known_args(argv)
    if args.command == "convert" and args.output is None and len(extra) == 1 and extra[0][:1] != "-":
        args.output = extra.pop()  # OUTPUT after the options: argparse leaves it over
    if extra:
        p.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# Library parameters whose command-line option has another name.
PARAMETER_DESTS = {"validation": "val_data"}


def in_flags(message: str, command: argparse.ArgumentParser) -> str:
    """``message`` with the command's flags for the parameters it names (``weights=`` -> ``--weights``,
    ``xla=True`` -> ``--xla``)."""
    for parameter, dest in PARAMETER_DESTS.items():
        message = re.sub(rf"(?<![\w-]){parameter}=", f"{dest}=", message)
    for action in command._actions:  # argparse lists a parser's options nowhere public
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag and action.dest.isidentifier():
            message = re.sub(rf"(?<![\w-]){action.dest}(?:= ?(?=\S)| (?=must\b))", f"{flag} ", message)
            message = message.replace(f"{flag} None", f"{flag} none")
            if action.nargs == 0 and action.const is True:  # a store_true option: the flag alone
                message = message.replace(f"{flag} True", flag)
    return message


def error_line(error: Exception) -> str:
    """One line for an error a user can cause."""
    if type(error) is OSError or (isinstance(error, OSError) and error.filename and error.strerror):
        where = f": {error.filename}" if error.filename else ""
        advice = "; free some space or write elsewhere" if error.errno == errno.ENOSPC else ""
        return f"{error.strerror or error}{where}{advice}"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(error).__name__  # one line, whatever the library said


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless the help states it (a ``None`` that means
    "imagenet" or "the next free version")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, pointing at ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = parse(sys.argv[1:] if argv is None else argv, p)
    try:
        return args.func(args)
    except (ValueError, OSError, export.MissingExtraError) as error:
        line = in_flags(error_line(error), p.commands[args.command])
        print(f"keras-inception {args.command}: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
