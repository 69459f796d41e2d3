"""Deployment: SavedModel for TF Serving, TFLite / LiteRT (float32, float16, int8), ONNX,
OpenVINO IR (float32, bfloat16, int8).

Every path is checked against the Keras model it came from (by default its inference
form, BatchNorm folded into the convolutions: :mod:`keras_inception.deploy.folding`);
:func:`compare` gives the figures (cosine similarity, top-1 agreement, max abs difference)
that the docs record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable

import keras
import numpy as np

from keras_inception.core.startup import import_tensorflow

tf = import_tensorflow(__name__, "SavedModel, LiteRT and ONNX export", extra="export")

from keras_inception.core import atomic as files  # noqa: E402
from keras_inception.core import cpu  # noqa: E402
from keras_inception.deploy import folding as inference  # noqa: E402
from keras_inception.input import imagenet, preprocessing  # noqa: E402
from keras_inception.nn.layers import output_layers  # noqa: E402

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
FORMATS = ("savedmodel", "tflite", "onnx", "openvino")
OPENVINO_PRECISIONS = ("float32", "bfloat16", "int8")
# the CPU plugin's INFERENCE_PRECISION_HINT for each: it computes in bf16 by default where the
# CPU has bf16 units, so float32 (and int8's unquantized layers) must ask for f32
OPENVINO_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}
SAVED_MODELS = "saved_models"


def output_kind(output: str) -> str:
    """``keras``, ``weights_h5`` or ``savedmodel`` (a folder: no suffix); other suffixes are refused."""
    if output.endswith(".keras"):
        return "keras"
    if output.endswith(".weights.h5"):
        return "weights_h5"
    suffix = os.path.splitext(output.rstrip("/"))[1]
    if suffix:
        raise ValueError(
            f"cannot write {output!r}: outputs are FILE.keras, FILE.weights.h5 or a SavedModel "
            f"folder (no suffix), not {suffix!r}"
        )
    return "savedmodel"


def default_output(name: str) -> str:
    """``saved_models/<name>``: where a SavedModel goes by default."""
    return os.path.join(SAVED_MODELS, name)


def save(model: keras.Model, output: str, version: int | None = None) -> str:
    """Write ``model`` atomically as ``.keras``, ``.weights.h5``, or a SavedModel at ``output/<version>``."""
    kind = output_kind(output)
    if kind == "savedmodel":
        return export_saved_model(model, output, version)
    with files.atomic_path(output) as staged:
        model.save(staged) if kind == "keras" else model.save_weights(staged)
    return output


def class_names(model_or_classes: keras.Model | int) -> list[str]:
    """The class names a model carries (see :class:`~keras_inception.nn.layers.ClassifierOutput`);
    else ImageNet's for 1000 / 1001 outputs (slim's background first), else the indices."""
    if isinstance(model_or_classes, keras.Model):
        model = model_or_classes
        recorded = getattr(output_layers(model)[0], "class_names", None)
        if recorded:
            return list(recorded)
        classes = model.outputs[0].shape[-1]
    else:
        classes = model_or_classes
    names = [name for _, name in imagenet.classes()]
    if classes == 1000:
        return names
    if classes == 1001:
        return ["background", *names]
    return [str(i) for i in range(classes)]


def next_version(base: str) -> int:
    """The next free TF Serving version number under ``base`` (1 for a new directory)."""
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def input_size(model: keras.Model) -> tuple[int, int]:
    height, width = model.input_shape[1:3]
    return (height or 299, width or 299)


def _archive(model: keras.Model) -> keras.export.ExportArchive:
    """An export archive holding each of ``model``'s variables once, as ``variables``.

    ``archive.track(model)`` would store every variable twice (the Keras variables it
    tracks and the ``tf.Variable`` the endpoints capture, as ``variables/*`` and
    ``_all_variables/*``); the collection of the ``tf.Variable`` themselves shares them.
    """
    archive = keras.export.ExportArchive()
    archive.add_variable_collection("variables", [v.value for v in model.variables])
    return archive


def export_saved_model(
    model: keras.Model,
    directory: str,
    version: int | None = None,
    top_k: int = 5,
    names: list[str] | None = None,
) -> str:
    """A SavedModel in TF Serving's layout (``directory/<version>``), written atomically.

    Signatures:
        ``serving_default``: ``images``, uint8 ``[N, H, W, 3]`` of any size.
        ``serve_image_bytes``: ``image_bytes``, a string batch of JPEG/PNG files (what
        TF Serving's REST API delivers from ``{"b64": ...}``).
    Both apply slim's evaluation transform inside and return ``probabilities`` (the
    model's output) and ``top_k_classes`` / ``top_k_names`` / ``top_k_scores``; an empty
    batch gives empty results. ``serve_image_bytes`` refuses an image over the pixel limit
    (:func:`preprocessing.pixel_limit` when exporting) from its header, before decoding,
    with an ``InvalidArgumentError`` naming its size.
    """
    size = input_size(model)
    classes = model.outputs[0].shape[-1]
    names = tf.constant(names or class_names(model))
    k = min(top_k, classes)

    def respond(images):
        """``images`` already sized and in [-1, 1] -> the model's output and its top k.

        An empty batch runs the model on one blank image and returns none of its rows
        (convolutions refuse a batch of zero).
        """
        count = tf.shape(images)[0]
        images = tf.cond(count > 0, lambda: images, lambda: tf.zeros([1, *size, 3], images.dtype))
        outputs = model(images, training=False)[:count]
        top = tf.math.top_k(outputs, k=k)
        return {
            "probabilities": outputs,
            "top_k_classes": top.indices,
            "top_k_names": tf.gather(names, top.indices),
            "top_k_scores": top.values,
        }

    def from_pixels(images):
        return respond(preprocessing.eval_transform(images, size))

    limit = preprocessing.pixel_limit()

    def from_bytes(image_bytes):
        def one(data):  # the pixel limit is checked from the header, before decoding
            return preprocessing.eval_transform(
                preprocessing.decode_image(preprocessing.check_pixels(data, limit)), size
            )

        images = tf.map_fn(
            one,
            image_bytes,
            fn_output_signature=tf.TensorSpec([*size, 3], tf.float32),
        )
        return respond(images)

    archive = _archive(model)
    archive.add_endpoint(
        "serving_default",
        from_pixels,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    archive.add_endpoint(
        "serve_image_bytes",
        from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    version = version or next_version(directory)
    final = os.path.join(directory, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; choose another version")
    with files.atomic_path(final) as staged:
        archive.write_out(staged, verbose=False)
    return final


def representative_images(directory: str, size: tuple[int, int], limit: int = 100) -> list[np.ndarray]:
    """Calibration inputs: images of ``directory`` after slim's evaluation transform."""
    files = sorted(
        os.path.join(directory, f)
        for f in os.listdir(directory)
        if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif"))
    )[:limit]
    if not files:
        raise ValueError(f"no JPEG/PNG/BMP/GIF images in calibration directory {directory}")
    return [preprocessing.eval_transform(preprocessing.load_image(f), size).numpy() for f in files]


def export_tflite(
    model: keras.Model,
    path: str,
    quantize: str = "none",
    calibration: Iterable[np.ndarray] | None = None,
) -> str:
    """A ``.tflite`` flatbuffer (batch 1, input float32 in [-1, 1]), written atomically,
    and its class names, one a line, in ``<path without .tflite>.labels.txt``.

    ``quantize``: ``none`` (float32), ``float16`` (weights), ``dynamic`` (int8 weights,
    float activations) or ``int8`` (full integer, int8 input and output, calibrated on
    ``calibration`` images).
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    size = input_size(model)
    with tempfile.TemporaryDirectory() as tmp:  # via SavedModel: the converter freezes its variables
        archive = _archive(model)
        archive.add_endpoint(
            "serve",
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([1, *size, 3], tf.float32, name="images")],
        )
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        flatbuffer = _convert(converter, quantize, calibration)
    files.write_bytes(labels_path(path), ("\n".join(class_names(model)) + "\n").encode())
    return files.write_bytes(path, flatbuffer)


def labels_path(path: str) -> str:
    """Where a TFLite file's class names go: ``model.tflite`` -> ``model.labels.txt``."""
    return os.path.splitext(path)[0] + ".labels.txt"


def _convert(converter, quantize: str, calibration) -> bytes:
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        samples = list(calibration or [])
        if not samples:
            raise ValueError("int8 quantization needs calibration images: calibration=DIR")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s[np.newaxis].astype(np.float32)] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


class TFLiteRunner:
    """Runs a ``.tflite`` file with LiteRT (XNNPACK on CPU), quantizing int8 I/O as needed."""

    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=path, num_threads=num_threads or os.cpu_count())
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self._one(image) for image in images])

    def _one(self, image: np.ndarray) -> np.ndarray:
        x = image[np.newaxis].astype(np.float32)
        if self.input["dtype"] in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] in (np.int8, np.uint8):
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


def export_onnx(model: keras.Model, path: str, opset: int = 17) -> str:
    """An ONNX file through tf2onnx (the ``onnx`` extra), dynamic batch, NHWC input; the class
    names are in its metadata (``class_names``, a JSON list)."""
    try:
        import tf2onnx
    except ImportError as error:
        raise _missing_extra(error, "onnx") from error
    size = input_size(model)
    fn = tf.function(lambda x: model(x, training=False))
    spec = (tf.TensorSpec([None, *size, 3], tf.float32, name="images"),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(class_names(model))
    return files.write_bytes(path, proto.SerializeToString())


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def _missing_extra(error: ImportError, extra: str) -> MissingExtraError:
    return MissingExtraError(f"{error.name or extra} is missing: pip install 'keras-inception[{extra}]'")


def export_openvino(
    model: keras.Model,
    path: str,
    precision: str = "float32",
    calibration: Iterable[np.ndarray] | None = None,
) -> str:
    """OpenVINO IR: ``path`` (``FILE.xml``) and its weights ``FILE.bin``, written atomically;
    converted from a SavedModel; input ``images``, float32 ``[N, H, W, 3]`` in [-1, 1].

    ``precision``: ``float32``; ``bfloat16`` (the same float32 weights, computed in bfloat16
    on CPUs that have it); ``int8`` (NNCF post-training quantization calibrated on
    ``calibration`` images, slim's evaluation transform applied). The model's rt_info holds,
    under ``keras_inception``: ``precision``, ``inference_precision_hint`` (``f32`` / ``bf16``,
    what to pass as ``INFERENCE_PRECISION_HINT`` when compiling: OpenVINO does not apply it
    by itself; :func:`openvino_runner` does) and ``class_names`` (a JSON list).
    """
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    if not path.endswith(".xml"):
        raise ValueError(f"an OpenVINO model is written as FILE.xml (and FILE.bin), not {path!r}")
    cpu.check_precision(precision)  # bfloat16 on a CPU without bfloat16 units: warned once
    samples = list(calibration or [])
    if precision == "int8" and not samples:
        raise ValueError("int8 quantization needs calibration images: calibration=DIR")
    try:
        import openvino

        if precision == "int8":
            import nncf
    except ImportError as error:
        raise _missing_extra(error, "openvino") from error
    size = input_size(model)
    with tempfile.TemporaryDirectory() as tmp:
        archive = _archive(model)
        archive.add_endpoint(
            "serve",
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, *size, 3], tf.float32, name="images")],
        )
        archive.write_out(tmp, verbose=False)
        converted = openvino.convert_model(tmp)
    if precision == "int8":
        dataset = nncf.Dataset(samples, lambda s: s[np.newaxis].astype(np.float32))
        converted = nncf.quantize(converted, dataset, subset_size=len(samples))
    for key, value in {
        "precision": precision,
        "inference_precision_hint": OPENVINO_HINTS[precision],
        "class_names": json.dumps(class_names(model)),
    }.items():
        converted.set_rt_info(value, ["keras_inception", key])
    with files.atomic_files([os.path.splitext(path)[0] + ".bin", path]) as (_, staged):
        openvino.save_model(converted, staged, compress_to_fp16=False)
    return path


def openvino_info(model_or_path) -> dict[str, str]:
    """What :func:`export_openvino` recorded in an IR's rt_info (empty for other IR files)."""
    if isinstance(model_or_path, str):
        import openvino

        model_or_path = openvino.Core().read_model(model_or_path)
    keys = [["keras_inception", k] for k in ("precision", "inference_precision_hint", "class_names")]
    return {k[1]: model_or_path.get_rt_info(k).astype(str) for k in keys if model_or_path.has_rt_info(k)}


def openvino_runner(path: str, hint: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Runs an ``.xml`` on the CPU, compiled with ``hint`` or else the precision hint it records."""
    import openvino

    core = openvino.Core()
    model = core.read_model(path)
    hint = hint or openvino_info(model).get("inference_precision_hint")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint} if hint else {})
    return lambda images: np.array(compiled(images.astype(np.float32))[0])


def onnx_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.astype(np.float32)})[0]


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Agreement of two output batches: mean cosine similarity, top-1 agreement, max abs diff."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {
        "cosine": float(cosine.mean()),
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def latency_ms(run: Callable[[np.ndarray], np.ndarray], image: np.ndarray, repeats: int = 10) -> float:
    """Median batch-1 latency in milliseconds, after one warm-up call."""
    batch = image[np.newaxis]
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_model` wrote, and how closely it agrees with the Keras model."""

    path: str
    size_bytes: int
    agreement: dict[str, float]  # :func:`compare` on check images (and a latency for TFLite)


SUFFIXES = {"savedmodel": "", "tflite": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


def check_options(
    fmt: str,
    output: str | None = None,
    quantize: str = "none",
    calibration: str | None = None,
    precision: str | None = None,
) -> None:
    """Refuse, before any work, options of :func:`export_model` that do not go together."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize != "none" and fmt != "tflite":
        raise ValueError(f"quantize={quantize} applies to format=tflite only")
    if precision is not None and fmt != "openvino":
        raise ValueError(f"precision={precision} applies to format=openvino only")
    if precision is not None and precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {OPENVINO_PRECISIONS}, got {precision!r}")
    if "int8" in (quantize, precision) and not calibration:
        raise ValueError("int8 quantization needs calibration images: calibration=DIR")
    if calibration and not os.path.isdir(calibration):
        raise FileNotFoundError(f"calibration folder not found: {calibration}")
    suffix = os.path.splitext(output.rstrip("/"))[1] if output else SUFFIXES[fmt]
    if output and suffix != SUFFIXES[fmt]:
        wanted = f"FILE{SUFFIXES[fmt]}" if SUFFIXES[fmt] else "a folder (no suffix)"
        other = next((f for f, s in SUFFIXES.items() if s and s == suffix), None)
        hint = f" (for {suffix}: format={other})" if other else ""
        raise ValueError(f"format={fmt} writes {wanted}; output={output!r} has {suffix or 'no suffix'}{hint}")


def export_model(
    model: keras.Model,
    fmt: str = "savedmodel",
    output: str | None = None,
    quantize: str = "none",
    calibration: str | None = None,
    version: int | None = None,
    fold_batchnorm: bool = True,
    precision: str | None = None,
) -> ExportResult:
    """Export ``model`` and check the result against Keras on up to 16 images.

    What is exported, and checked against, is the model's inference form
    (:func:`inference.fold_batchnorm`: BatchNorm folded into the convolutions), or
    ``model`` as it is with ``fold_batchnorm=False``. The check images are
    ``calibration``'s (after slim's evaluation transform), or one random image; the
    SavedModel is checked through its ``serving_default``. ``quantize`` is TFLite's,
    ``precision`` OpenVINO's (default float32); both int8 calibrate on ``calibration``'s
    images (the first 100).
    """
    check_options(fmt, output, quantize, calibration, precision)
    if fold_batchnorm:
        model = inference.fold_batchnorm(model)
    size = input_size(model)
    if calibration:
        check = representative_images(calibration, size)
    else:
        noise = np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8)
        check = [preprocessing.eval_transform(noise, size).numpy()]
    images = np.stack(check[:16])
    if fmt == "savedmodel":
        path = export_saved_model(model, output or default_output(model.name), version)
        pixels = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
        served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(pixels))
        expected = model.predict(preprocessing.eval_transform(pixels, size), verbose=0)
        agreement = compare(expected, served["probabilities"].numpy())
    elif fmt == "tflite":
        path = output or os.path.join(SAVED_MODELS, f"{model.name}_{quantize}.tflite")
        export_tflite(model, path, quantize, check if calibration else None)
        runner = TFLiteRunner(path)
        agreement = compare(model.predict(images, verbose=0), runner(images))
        agreement["latency_ms_batch1"] = latency_ms(runner, images[0])
    elif fmt == "openvino":
        precision = precision or "float32"
        path = output or os.path.join(SAVED_MODELS, f"{model.name}_{precision}.xml")
        export_openvino(model, path, precision, check if calibration else None)
        agreement = compare(model.predict(images, verbose=0), openvino_runner(path)(images))
        path_bin = os.path.splitext(path)[0] + ".bin"
        return ExportResult(path, disk_size(path) + disk_size(path_bin), agreement)
    else:
        path = export_onnx(model, output or os.path.join(SAVED_MODELS, f"{model.name}.onnx"))
        agreement = compare(model.predict(images, verbose=0), onnx_runner(path)(images))
    return ExportResult(path, disk_size(path), agreement)
