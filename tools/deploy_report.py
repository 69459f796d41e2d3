"""Measure every deployment path of full-size models on real photos; write docs/deployment-report.md.

    python tools/deploy_report.py --images ../shared/datasets/imagenet_sample/images \
        --models inception_v3 inception_v4 --weights imagenet

For each model: file size, cosine similarity of logits and top-1 agreement with the
float32 Keras model, and batch-1 latency (LiteRT with XNNPACK; ONNX Runtime; OpenVINO on
the CPU). The first half of the images calibrates int8, the second half is measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_inception.deploy import export  # noqa: E402
from keras_inception.models import create  # noqa: E402


def measure(name: str, weights: str | None, images: list[np.ndarray], workdir: str) -> list[dict]:
    model = create(name, weights=weights, classifier_activation=None)  # logits, as the issue asks
    calibration, held_out = images[: len(images) // 2], np.stack(images[len(images) // 2 :])
    reference = model.predict(held_out, batch_size=8, verbose=0)
    rows = []

    def keras_run(batch):
        return model.predict(batch, verbose=0)

    rows.append(
        {
            "path": "Keras float32",
            "size_mb": sum(int(np.prod(w.shape)) * 4 for w in model.weights) / 1e6,
            **export.compare(reference, reference),
            "latency_ms": export.latency_ms(keras_run, held_out[0]),
        }
    )
    for quantize in export.QUANTIZATIONS:
        path = os.path.join(workdir, f"{name}_{quantize}.tflite")
        export.export_tflite(model, path, quantize, calibration)
        runner = export.TFLiteRunner(path)
        label = {"none": "float32", "dynamic": "dynamic-range int8", "int8": "full int8"}.get(
            quantize, quantize
        )
        rows.append(
            {
                "path": f"LiteRT {label}",
                "size_mb": os.path.getsize(path) / 1e6,
                **export.compare(reference, runner(held_out)),
                "latency_ms": export.latency_ms(runner, held_out[0]),
            }
        )
        print(name, rows[-1], flush=True)
    try:
        path = export.export_onnx(model, os.path.join(workdir, f"{name}.onnx"))
        run = export.onnx_runner(path)
        rows.append(
            {
                "path": "ONNX Runtime float32",
                "size_mb": os.path.getsize(path) / 1e6,
                **export.compare(reference, run(held_out)),
                "latency_ms": export.latency_ms(run, held_out[0]),
            }
        )
    except ImportError as error:
        print(f"ONNX skipped: {error}")
    for precision in export.OPENVINO_PRECISIONS:
        try:
            path = export.export_openvino(
                model, os.path.join(workdir, f"{name}_{precision}.xml"), precision, calibration
            )
        except ImportError as error:
            print(f"OpenVINO skipped: {error}")
            break
        run = export.openvino_runner(path)
        rows.append(
            {
                "path": f"OpenVINO {precision}" + (" (NNCF)" if precision == "int8" else ""),
                "size_mb": export.disk_size(path.replace(".xml", ".bin")) / 1e6,
                **export.compare(reference, run(held_out)),
                "latency_ms": export.latency_ms(run, held_out[0]),
            }
        )
        print(name, rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of real photos (JPEG/PNG)")
    p.add_argument("--models", nargs="+", default=["inception_v3", "inception_v4"])
    p.add_argument("--weights", default=None, help="imagenet, or omit for the default initialisation")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--output", default="docs/deployment-report.md")
    args = p.parse_args()
    images = export.representative_images(args.images, (299, 299), args.limit)
    lines = [
        "# Deployment: sizes, agreement and latency",
        "",
        f"Measured by `tools/deploy_report.py` on {datetime.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, TensorFlow {tf.__version__}; {len(images)} photos of `{args.images}` "
        f"(first half calibrates int8, second half is measured). Weights: `{args.weights}`"
        + (
            ""
            if args.weights
            else " (the default initialisation: no pretrained weights can be downloaded "
            "on the machine that made this table, so agreement is measured on untrained networks)"
        )
        + ".",
        "Agreement is against the float32 Keras model's logits; latency is the median of 10 batch-1 "
        "calls after a warm-up (LiteRT uses XNNPACK on the CPU; OpenVINO bfloat16 is the float32 file "
        "compiled with `INFERENCE_PRECISION_HINT=bf16`, its int8 is NNCF's post-training quantization). "
        "Untrained logits are small and nearly tied, so top-1 agreement understates what trained "
        "weights give; the cosine similarity is the figure to read. Latencies are only as quiet as "
        "the machine was: `tools/benchmark.py` has the controlled throughput figures.",
        "",
    ]
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows = measure(name, args.weights, images, workdir)
            lines += [
                f"## {name}",
                "",
                "| path | size (MB) | cosine | top-1 agreement | max abs diff | latency (ms) |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {r['path']} | {r['size_mb']:.1f} | {r['cosine']:.6f} | {r['top1_agreement']:.2%} | "
                f"{r['max_abs_diff']:.3g} | {r['latency_ms']:.1f} |"
                for r in rows
            ]
            lines.append("")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
