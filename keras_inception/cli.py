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
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_tf()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"keras-inception {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
