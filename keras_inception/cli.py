"""``keras-inception``: convert slim checkpoints, classify images, export for deployment."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

DEFAULT_MODEL = "inception_v4"


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def save(model, output: str, version: int | None = None) -> str:
    """Write ``model`` atomically: ``.keras``, ``.weights.h5``, or a SavedModel at ``output/<version>``."""
    if not output.endswith((".keras", ".weights.h5")):
        from keras_inception import export

        return export.export_saved_model(model, output, version)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    suffix = ".keras" if output.endswith(".keras") else ".weights.h5"
    fd, staged = tempfile.mkstemp(dir=parent, prefix=".partial-", suffix=suffix)
    os.close(fd)
    try:
        model.save(staged) if suffix == ".keras" else model.save_weights(staged)
        os.replace(staged, output)
    finally:
        if os.path.exists(staged):
            os.remove(staged)
    return output


def cmd_convert(args) -> int:
    import numpy as np

    from keras_inception import checkpoint, weights
    from keras_inception.models import get

    use_ema = not args.no_ema
    with tempfile.TemporaryDirectory() as tmp:
        if weights.is_pretrained_name(args.source):
            model_name = args.model or DEFAULT_MODEL
            variables = weights.fetch(model_name, args.source, use_ema)
            use_ema = False  # resolved when cached
        else:
            source = args.source
            if source.endswith(weights.ARCHIVE_SUFFIXES):
                source = weights.extract_checkpoint(source, tmp)
            variables = checkpoint.read(source)
            model_name = checkpoint.family_of(variables)
            if args.model and args.model != model_name:
                raise checkpoint.CheckpointError(f"checkpoint holds {model_name}, --model says {args.model}")
    builder, spec = get(model_name)
    model = builder(weights=None, classes=args.classes, aux_logits=args.aux_logits)
    report = checkpoint.assign(model, variables, model_name, use_ema=use_ema)
    total = len(checkpoint.resolve_ema(variables, use_ema)[0])
    print(f"converted {model_name} from {args.source}")
    print(
        f"  {report.used} of {total} slim variables -> {report.assigned} Keras weights"
        f" ({args.classes} classes{', aux head' if args.aux_logits else ''}"
        f"{', moving averages' if report.ema else ''})"
    )
    if report.skipped_heads:
        print(
            f"  not converted (head not built): {len(report.skipped_heads)} variables of "
            f"{sorted({n.split('/')[1] for n in report.skipped_heads})}"
        )
    probe = np.random.default_rng(0).uniform(-1, 1, (1, spec.default_size, spec.default_size, 3))
    outputs = model.predict(probe.astype("float32"), verbose=0)
    finite = all(np.isfinite(o).all() for o in (outputs if isinstance(outputs, list) else [outputs]))
    all_used = report.used + len(report.skipped_heads) == total
    print(
        f"  check: output finite {'yes' if finite else 'NO'}; every variable used "
        f"{'yes' if all_used else 'NO'}"
    )
    if not (finite and all_used):
        return 1
    output = args.output or os.path.join("saved_models", model_name)
    print(f"wrote {save(model, output, args.version)}")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    import keras_inception as ki
    from keras_inception import preprocessing
    from keras_inception.models import get

    builder, spec = get(args.model)
    model = builder(weights=args.weights, classes=1000)
    for path in args.images:
        image = preprocessing.load_image(path)
        batch = preprocessing.eval_transform(image, spec.default_size)[np.newaxis]
        probabilities = model.predict(batch, verbose=0)
        print(f"{path}:")
        for synset, name, score in ki.decode_predictions(probabilities, top=args.top)[0]:
            print(f"  {score:7.2%}  {name} ({synset})")
    return 0


def cmd_export(args) -> int:
    import numpy as np

    from keras_inception import export, preprocessing
    from keras_inception.models import create

    model = create(args.source, weights=args.weights) if args.weights else create(args.source)
    size = export.input_size(model)
    name = model.name
    check = (
        export.representative_images(args.calibration, size)
        if args.calibration
        else [
            preprocessing.eval_transform(
                np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8), size
            ).numpy()
        ]
    )
    images = np.stack(check[:16])
    reference = model.predict(images, verbose=0)
    if args.format == "savedmodel":
        path = export.export_saved_model(
            model, args.output or os.path.join("saved_models", name), args.version
        )
        import tensorflow as tf

        pixels = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
        served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(pixels))
        ours = model.predict(preprocessing.eval_transform(pixels, size), verbose=0)
        result = export.compare(ours, served["probabilities"].numpy())
    elif args.format == "tflite":
        path = args.output or os.path.join("saved_models", f"{name}_{args.quantize}.tflite")
        export.export_tflite(model, path, args.quantize, check if args.calibration else None)
        runner = export.TFLiteRunner(path)
        result = export.compare(reference, runner(images))
        result["latency_ms_batch1"] = export.latency_ms(runner, images[0])
    else:
        path = export.export_onnx(model, args.output or os.path.join("saved_models", f"{name}.onnx"))
        result = export.compare(reference, export.onnx_runner(path)(images))
    size_mb = export.disk_size(path) / 1e6
    print(f"exported {name} -> {path} ({size_mb:.1f} MB)")
    print(f"  against Keras on {len(images)} images: " + ", ".join(f"{k} {v:.6g}" for k, v in result.items()))
    return 0


def _source(spec: str, args, split: str):
    from keras_inception import data

    return data.open_source(
        spec,
        split,
        args.data_dir,
        num_classes=args.num_classes,
        label_offset=args.label_offset,
        manual_dir=args.manual_dir,
        on_error=args.on_error,
    )


def cmd_train(args) -> int:
    import keras
    import tensorflow as tf

    from keras_inception import data, training
    from keras_inception.models import get

    if args.mixed_precision:
        keras.config.set_dtype_policy(f"mixed_{args.mixed_precision}")
    builder, spec = get(args.model)
    recipe = training.Recipe(
        learning_rate=args.learning_rate,
        warmup_epochs=args.warmup_epochs,
        clipnorm=args.clipnorm,
        ema_momentum=None if args.no_ema else args.ema_momentum,
        label_smoothing=args.label_smoothing,
    )
    source = _source(args.data, args, "train")
    val = _source(args.val_data, args, args.val_split) if args.val_data else None
    strategy = training.get_strategy(args.strategy, args.tpu)
    global_batch = args.batch_size
    steps = args.steps_per_epoch or (source.size // global_batch if source.size else None)
    if not steps:
        raise ValueError("the dataset size is unknown (TFRecords): pass --steps-per-epoch")
    extra = {"width": args.width} | ({"depths": tuple(args.depths)} if args.depths else {})

    def build():
        model = builder(
            weights=None,
            classes=source.num_classes,
            input_shape=(args.image_size, args.image_size, 3),
            aux_logits=args.aux_logits,
            **extra,
        )
        if args.sync_bn:
            training.sync_batch_norm(model)
        return model

    def pipeline(src, is_training, batch):
        return data.pipeline(
            src,
            batch,
            is_training,
            args.image_size,
            aux_logits=args.aux_logits and is_training,
            repeat=is_training,
            seed=args.seed,
        )

    keras.utils.set_random_seed(args.seed)
    if args.strategy == "multi-worker":

        def dataset_fn(context: tf.distribute.InputContext):
            shard = data.Source(
                source.dataset.shard(context.num_input_pipelines, context.input_pipeline_id),
                source.class_names,
                None,
            )
            return pipeline(shard, True, context.get_per_replica_batch_size(global_batch))

        model, losses = training.distributed_fit(
            strategy,
            build,
            dataset_fn,
            global_batch,
            args.epochs * steps,
            recipe,
            steps,
            checkpoint_dir=os.path.join(args.output, "backup"),
        )
        print(
            f"trained {args.epochs * steps} steps; last loss {losses[-1]:.4f}" if losses else "nothing to do"
        )
        model.save(os.path.join(args.output, "final.keras"))
    else:
        training.train(
            build,
            pipeline(source, True, global_batch),
            pipeline(val, False, global_batch) if val else None,
            args.output,
            args.epochs,
            steps,
            recipe,
            strategy,
            args.xla,
        )
    print(f"wrote {os.path.join(args.output, 'final.keras')}")
    return 0


def cmd_finetune(args) -> int:
    from keras_inception import training

    summary = training.finetune(
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
        seed=args.seed,
    )
    history = summary["history"]
    print(
        f"classes: {len(summary['classes'])}; images: {summary['train_images']} train, "
        f"{summary['validation_images']} validation"
    )
    if summary["skipped_files"]:
        print(f"skipped {len(summary['skipped_files'])} unreadable files: {summary['skipped_files'][:5]}")
    best = os.path.join(args.output, "best.keras")
    print(f"best validation top-1 {max(history['val_top1']):.2%}; model: {best}")
    return 0


def cmd_evaluate(args) -> int:
    from keras_inception import evaluation
    from keras_inception.models import create

    source = _source(args.data, args, args.split)
    models = [create(m, weights=args.weights) if args.weights else create(m) for m in args.models]
    size = models[0].input_shape[1] or 299
    print(f"{'+'.join(m.name for m in models)} on {args.data}")
    print("| crops | images | top-1 error % | top-5 error % |")
    print("| --- | --- | --- | --- |")
    results = []
    for scheme in args.crops:
        result = evaluation.evaluate(
            models, source.dataset, source.class_names, scheme, size, args.limit, total=source.size
        )
        results.append(result)
        print(f"| {scheme} | {result.images} | {result.top1_error:.2f} | {result.top5_error:.2f} |")
    print("most confused (true -> predicted, count):")
    for true, predicted, count in results[-1].confused:
        print(f"  {true} -> {predicted}: {count}")
    return 0


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--manual-dir", help="TFDS manual_dir (imagenet2012)")
    p.add_argument("--num-classes", type=int, help="classes of TFRecord data")
    p.add_argument("--label-offset", type=int, default=0, help="added to TFRecord labels (slim ImageNet: -1)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip", help="unreadable image files")
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    from keras_inception.models import MODELS

    p = argparse.ArgumentParser(prog="keras-inception", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a TF-slim checkpoint to .keras, .weights.h5 or a SavedModel")
    c.add_argument(
        "source", help="checkpoint prefix (V1 file or V2), official .tar.gz, or a tag like imagenet"
    )
    c.add_argument(
        "output",
        nargs="?",
        help="FILE.keras, FILE.weights.h5 or a SavedModel directory "
        "(default saved_models/<model>, written to <dir>/<version>)",
    )
    c.add_argument("--model", choices=sorted(MODELS), help="expected family (detected from the checkpoint)")
    c.add_argument(
        "--classes",
        type=int,
        choices=(1000, 1001),
        default=1000,
        help="1000 drops slim's background class 0; 1001 keeps it",
    )
    c.add_argument("--aux-logits", action="store_true", help="convert the auxiliary head too")
    c.add_argument("--no-ema", action="store_true", help="take raw variables, not their moving averages")
    c.add_argument("--version", type=int, help="SavedModel version directory (default: next free)")
    c.set_defaults(func=cmd_convert)

    r = sub.add_parser("predict", help="top ImageNet classes of images")
    r.add_argument("images", nargs="+", help="JPEG / PNG / GIF / BMP files, any size, colour or grayscale")
    r.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    r.add_argument("--weights", default="imagenet", help="imagenet (or another tag), or a weights file")
    r.add_argument("--top", type=int, default=5)
    r.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="SavedModel for TF Serving, TFLite / LiteRT, or ONNX")
    e.add_argument("source", help="model name (with --weights), .keras file, or slim checkpoint / archive")
    e.add_argument("--weights", help="with a model name: imagenet (or another tag) or a weights file")
    e.add_argument("--format", choices=("savedmodel", "tflite", "onnx"), default="savedmodel")
    e.add_argument("--quantize", choices=("none", "float16", "dynamic", "int8"), default="none")
    e.add_argument("--calibration", help="image folder: int8 calibration, and the images the check runs on")
    e.add_argument("--output", help="SavedModel directory (versioned) or file; default under saved_models/")
    e.add_argument("--version", type=int, help="SavedModel version (default: next free)")
    e.set_defaults(func=cmd_export)

    t = sub.add_parser("train", help="train from scratch with the paper's recipe")
    t.add_argument("--data", required=True, help="image folder, TFRecord glob, or tfds:NAME")
    t.add_argument("--val-data", help="validation data (same forms)")
    t.add_argument("--val-split", default="validation", help="TFDS split of --val-data")
    t.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--output", default="train_output")
    t.add_argument(
        "--strategy", choices=("one-device", "mirrored", "multi-worker", "tpu"), default="one-device"
    )
    t.add_argument("--tpu", help="TPU name or address for --strategy tpu")
    t.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over the global batch")
    t.add_argument("--mixed-precision", choices=("bfloat16", "float16"))
    t.add_argument("--xla", action="store_true", help="jit_compile the training step")
    t.add_argument("--aux-logits", action="store_true", help="train the aux head (loss weight 0.4)")
    t.add_argument("--learning-rate", type=float, default=0.045)
    t.add_argument("--warmup-epochs", type=float, default=0.0)
    t.add_argument("--clipnorm", type=float)
    t.add_argument("--label-smoothing", type=float, default=0.1)
    t.add_argument("--ema-momentum", type=float, default=0.9999)
    t.add_argument("--no-ema", action="store_true", help="no moving average of the weights")
    t.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    t.add_argument("--depths", type=int, nargs=3, help="blocks per stage (v4 and Inception-ResNets)")
    _data_options(t)
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("finetune", help="transfer learning on an image folder (one subfolder per class)")
    f.add_argument("--data", required=True)
    f.add_argument("--model", choices=sorted(MODELS), default=DEFAULT_MODEL)
    f.add_argument("--weights", default="imagenet", help="imagenet, a weights file, or none (random base)")
    f.add_argument("--output", default="finetune_output")
    f.add_argument("--epochs", type=int, default=5, help="epochs with the base frozen")
    f.add_argument("--fine-tune-epochs", type=int, default=0, help="then epochs with the top blocks unfrozen")
    f.add_argument("--unfreeze-from", default="Mixed_7a")
    f.add_argument("--learning-rate", type=float, default=1e-3)
    f.add_argument("--fine-tune-learning-rate", type=float, default=1e-4)
    f.add_argument("--validation-split", type=float, default=0.1)
    _data_options(f)
    f.set_defaults(func=cmd_finetune)

    v = sub.add_parser(
        "evaluate", help="top-1/top-5 error for 1, 12 and 144 crops, single models or ensembles"
    )
    v.add_argument("--data", required=True, help="image folder, TFRecord glob, or tfds:NAME")
    v.add_argument("--split", default="validation")
    v.add_argument(
        "--models", nargs="+", required=True, help="model names (with --weights), .keras files or checkpoints"
    )
    v.add_argument("--weights", help="for model names: imagenet or a weights file")
    v.add_argument("--crops", type=int, nargs="+", default=[1], choices=(1, 12, 144))
    v.add_argument("--limit", type=int, help="evaluate the first N images")
    _data_options(v)
    v.set_defaults(func=cmd_evaluate)

    sub.add_parser(
        "benchmark", help="speed, memory and scaling against keras.applications (--help for options)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["benchmark"]:  # its own options: keras_inception/benchmark.py
        from keras_inception import benchmark

        return benchmark.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"keras-inception {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
