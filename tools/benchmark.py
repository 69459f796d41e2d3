"""Speed, memory and scaling of the four networks, beside keras.applications and the
machine's matmul peak, in one run; writes docs/benchmarks.md and PNG plots.

    keras-inception benchmark            # or python tools/benchmark.py: the full table
    keras-inception benchmark --quick    # batch 1 and 32, float32 / bfloat16 only

Every figure is a median of --repeats timed calls after a warm-up, with min and max.
Speed is never asserted in tests; tests/test_benchmark.py runs a tiny configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_inception import export, reporting  # noqa: E402
from keras_inception.models import MODELS, multiply_adds  # noqa: E402

PEERS = {
    "inception_resnet_v2": keras.applications.InceptionResNetV2,
    "inception_v3": keras.applications.InceptionV3,
}


def timed(fn: Callable[[], object], repeats: int, images: int) -> dict:
    """images/s of ``fn``: median, min and max of ``repeats`` calls after one warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(images / (time.perf_counter() - start))
    return {"median": float(np.median(rates)), "min": float(min(rates)), "max": float(max(rates))}


def matmul_peak(n: int, dtype: str, repeats: int) -> float:
    """GFLOP/s of an n x n matmul (the machine's practical limit)."""
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda: tf.matmul(a, a))
    rate = timed(lambda: f().numpy(), repeats, 1)["median"]
    return 2 * n**3 * rate / 1e9


def build(name: str, size: int, policy: str = "float32", peer: bool = False) -> keras.Model:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if peer:
            return PEERS[name](weights=None, input_shape=(size, size, 3), classifier_activation=None)
        return MODELS[name](input_shape=(size, size, 3), classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(previous)


def keras_rate(model: keras.Model, batch: int, size: int, xla: bool, repeats: int) -> dict:
    x = tf.random.uniform((batch, size, size, 3), -1, 1)
    f = tf.function(lambda t: model(t, training=False), jit_compile=xla)
    return timed(lambda: f(x).numpy(), repeats, batch)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return export.compare(np.asarray(a, np.float32), np.asarray(b, np.float32))["cosine"]


def inference_rows(args, name: str) -> list[dict]:
    rows = []
    size = args.image_size
    fp32 = build(name, size)
    gflop = 2 * multiply_adds(fp32) / 1e9
    probe = tf.random.uniform((4, size, size, 3), -1, 1, seed=0)
    reference = fp32(probe, training=False).numpy()
    for policy in args.precisions:
        model = fp32 if policy == "float32" else build(name, size, policy)
        if model is not fp32:
            model.set_weights(fp32.get_weights())
        agree = cosine(reference, model(probe, training=False))
        for xla in args.xla:
            for batch in args.batch_sizes:
                rate = keras_rate(model, batch, size, xla, args.repeats)
                rows.append(
                    {
                        "model": name,
                        "path": f"Keras {policy}" + (" XLA" if xla else ""),
                        "batch": batch,
                        **rate,
                        "gflops": gflop * rate["median"],
                        "cosine": agree,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    if name in PEERS and not args.skip_peers:
        peer = build(name, size, peer=True)
        for batch in args.batch_sizes:
            rate = keras_rate(peer, batch, size, False, args.repeats)
            rows.append(
                {
                    "model": name,
                    "path": "keras.applications float32",
                    "batch": batch,
                    **rate,
                    "gflops": gflop * rate["median"],
                    "cosine": float("nan"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if not args.skip_deploy:
        rows += deploy_rows(args, name, fp32, gflop, reference, probe)
    return rows


def deploy_rows(args, name, model, gflop, reference, probe) -> list[dict]:
    rows = []
    size = args.image_size
    one = probe.numpy()[:1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sm")
        model.export(path, format="tf_saved_model", verbose=False)
        served = tf.saved_model.load(path)
        for batch in args.batch_sizes:
            x = tf.random.uniform((batch, size, size, 3), -1, 1)
            rate = timed(lambda x=x: served.serve(x).numpy(), args.repeats, batch)
            rows.append(
                {
                    "model": name,
                    "path": "SavedModel float32",
                    "batch": batch,
                    **rate,
                    "gflops": gflop * rate["median"],
                    "cosine": cosine(reference, served.serve(probe)),
                }
            )
        calibration = [
            np.random.default_rng(i).uniform(-1, 1, (size, size, 3)).astype(np.float32) for i in range(8)
        ]
        for quantize in ("none", "float16", "int8"):
            f = export.export_tflite(model, os.path.join(tmp, f"{quantize}.tflite"), quantize, calibration)
            runner = export.TFLiteRunner(f)
            rate = timed(lambda runner=runner: runner(one), args.repeats, 1)
            label = {"none": "float32"}.get(quantize, quantize)
            rows.append(
                {
                    "model": name,
                    "path": f"LiteRT {label} (XNNPACK)",
                    "batch": 1,
                    **rate,
                    "gflops": gflop * rate["median"],
                    "cosine": cosine(reference, runner(probe.numpy())),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        try:
            run = export.onnx_runner(export.export_onnx(model, os.path.join(tmp, "m.onnx")))
            for batch in args.batch_sizes:
                x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
                rate = timed(lambda x=x: run(x), args.repeats, batch)
                rows.append(
                    {
                        "model": name,
                        "path": "ONNX Runtime float32",
                        "batch": batch,
                        **rate,
                        "gflops": gflop * rate["median"],
                        "cosine": cosine(reference, run(probe.numpy())),
                    }
                )
        except ImportError:
            print("onnx extra not installed: no ONNX rows")
    return rows


def train_worker(name: str, batch: int, size: int, repeats: int) -> dict:
    """Training images/s and peak RSS, measured in a fresh process."""
    model = MODELS[name](input_shape=(size, size, 3))
    model.compile(
        keras.optimizers.RMSprop(0.045, rho=0.9, momentum=0.9, epsilon=1.0), "categorical_crossentropy"
    )
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = np.eye(1000, dtype=np.float32)[np.arange(batch) % 1000]
    rate = timed(lambda: model.train_on_batch(x, y), repeats, batch)
    return {
        "model": name,
        "batch": batch,
        **rate,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def training_rows(args, name: str) -> list[dict]:
    rows = []
    for batch in args.train_batch_sizes:
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--train-worker",
                name,
                str(batch),
                "--repeats",
                str(args.repeats),
                "--image-size",
                str(args.image_size),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            rows.append({"model": name, "batch": batch, "error": out.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def scaling_rows(args, name: str) -> list[dict]:
    rows = []
    for size in args.sizes:
        model = build(name, size)
        gflop = 2 * multiply_adds(model) / 1e9
        for batch in args.scaling_batches if size == args.image_size else [args.scaling_batches[-1]]:
            rate = keras_rate(model, batch, size, False, args.repeats)
            rows.append(
                {"model": name, "size": size, "batch": batch, **rate, "gflops": gflop * rate["median"]}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def profile_rows(args, name: str, batch: int = 16) -> list[dict]:
    """Where the time goes: every convolution timed alone on its own input shape, summed
    by kernel shape, against the whole network; the rest is BatchNorm, ReLU, pooling,
    concatenation and memory traffic."""
    model = build(name, args.image_size)
    total = keras_rate(model, batch, args.image_size, False, args.repeats)["median"]
    whole_s = batch / total
    groups: dict[str, list[float]] = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.Conv2D):
            continue
        x = tf.random.uniform((batch, *layer.input.shape[1:]))
        f = tf.function(lambda t, layer=layer: layer(t))
        seconds = batch / timed(lambda f=f, x=x: f(x).numpy(), args.repeats, batch)["median"]
        kh, kw = layer.kernel_size
        _, h, w, c_out = layer.output.shape
        macs = batch * h * w * kh * kw * layer.input.shape[-1] * c_out
        key = f"{kh}x{kw} conv"
        seconds_sum, macs_sum = groups.get(key, [0.0, 0.0])
        groups[key] = [seconds_sum + seconds, macs_sum + macs]
    rows = [
        {"model": name, "part": k, "seconds": v[0], "share": v[0] / whole_s, "gflops": 2 * v[1] / v[0] / 1e9}
        for k, v in sorted(groups.items(), key=lambda kv: -kv[1][0])
    ]
    conv_s = sum(v[0] for v in groups.values())
    rows.append(
        {
            "model": name,
            "part": "everything else",
            "seconds": max(whole_s - conv_s, 0.0),
            "share": max(whole_s - conv_s, 0.0) / whole_s,
            "gflops": float("nan"),
        }
    )
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = tf.config.list_physical_devices("GPU")
    accelerator = f"{len(gpus)} GPU" if gpus else "no GPU"
    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    return f"{cpu}, {os.cpu_count()} cores, {accelerator}, {versions}"


def find(rows: list[dict], model: str, path: str, batch: int) -> dict | None:
    return next((r for r in rows if (r["model"], r["path"], r["batch"]) == (model, path, batch)), None)


def write_report(
    args, peak: dict, inference: list, training: list, scaling: list, profile: list = ()
) -> None:
    f = lambda r: f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"  # noqa: E731
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `tools/benchmark.py` on {datetime.date.today()}: {machine()}.",
        f"Median images/s of {args.repeats} timed calls after a warm-up (min-max in brackets); "
        f"{args.image_size}x{args.image_size} inputs unless stated.",
        "",
        f"Machine limit: float32 matmul {peak['float32']:.1f} GFLOP/s"
        + (f", bfloat16 matmul {peak['bfloat16']:.1f} GFLOP/s" if "bfloat16" in peak else "")
        + f" ({args.matmul_size}x{args.matmul_size}).",
        "",
        "## Inference",
        "",
        *reporting.table(
            [
                "model",
                "path",
                "batch",
                "images/s",
                "GFLOP/s",
                "share of fp32 matmul peak",
                "logits cosine vs fp32",
            ],
            [
                [
                    r["model"],
                    r["path"],
                    r["batch"],
                    f(r),
                    f"{r['gflops']:.1f}",
                    f"{r['gflops'] / peak['float32']:.0%}",
                    f"{r['cosine']:.6f}",
                ]
                for r in inference
            ],
        ),
    ]

    def against(path: str, base_path: str) -> list[tuple[dict, dict]]:
        pairs = [
            (r, find(inference, r["model"], base_path, r["batch"])) for r in inference if r["path"] == path
        ]
        return [(r, base) for r, base in pairs if base]

    peers = against("keras.applications float32", "Keras float32")
    if peers:
        lines += ["", "### Ours against keras.applications (same run, float32)", ""]
        lines += reporting.table(
            ["model", "batch", "ours images/s", "keras.applications images/s", "ratio"],
            [
                [
                    r["model"],
                    r["batch"],
                    f"{ours['median']:.2f}",
                    f"{r['median']:.2f}",
                    f"{ours['median'] / r['median']:.2f}x",
                ]
                for r, ours in peers
            ],
        )
    bf16 = against("Keras mixed_bfloat16", "Keras float32")
    if bf16:
        lines += ["", "### mixed_bfloat16 against float32", ""]
        lines += reporting.table(
            ["model", "batch", "speed-up", "logits cosine"],
            [
                [r["model"], r["batch"], f"{r['median'] / base['median']:.2f}x", f"{r['cosine']:.6f}"]
                for r, base in bf16
            ],
        )
    if training:
        lines += ["", "## Training (`train_on_batch`, RMSProp, float32)", ""]
        lines += reporting.table(
            ["model", "batch", "images/s", "peak RSS (GB)"],
            [
                [r["model"], r["batch"], f(r), f"{r['peak_rss_gb']:.1f}"]
                if "error" not in r
                else [r["model"], r["batch"], f"failed: {r['error']}", "-"]
                for r in training
            ],
        )
    if profile:
        lines += [
            "",
            "## Where the time goes (float32, batch 16)",
            "",
            "Each convolution timed alone on its own input shape, summed by kernel shape; "
            "'everything else' is the whole network's time minus the convolutions'.",
            "",
        ]
        lines += reporting.table(
            ["model", "part", "seconds per batch", "share of the network's time", "GFLOP/s"],
            [
                [r["model"], r["part"], f"{r['seconds']:.3f}", f"{r['share']:.0%}", f"{r['gflops']:.1f}"]
                for r in profile
            ],
        )
    if scaling:
        lines += ["", "## Scaling (Keras float32)", ""]
        lines += reporting.table(
            ["model", "input", "batch", "images/s", "GFLOP/s"],
            [[r["model"], r["size"], r["batch"], f(r), f"{r['gflops']:.1f}"] for r in scaling],
        )
        plot_scaling(
            scaling,
            os.path.join(os.path.dirname(args.output) or ".", "benchmark_scaling.png"),
            args.image_size,
        )
        lines += ["", "![scaling](benchmark_scaling.png)"]
    reporting.write_text(args.output, lines)
    results = {
        "machine": machine(),
        "peak": peak,
        "inference": inference,
        "training": training,
        "scaling": scaling,
        "profile": list(profile),
    }
    reporting.write_text(os.path.splitext(args.output)[0] + ".json", [json.dumps(results, indent=1)])
    print(f"wrote {args.output}")


def plot_scaling(rows: list[dict], path: str, size: int) -> None:
    models = sorted({r["model"] for r in rows})
    largest = max(r["batch"] for r in rows)

    def series(key: str, keep) -> dict:
        picked = {m: [r for r in rows if r["model"] == m and keep(r)] for m in models}
        return {m: ([r[key] for r in rs], [r["median"] for r in rs]) for m, rs in picked.items()}

    reporting.plot(
        path,
        [
            reporting.Panel(
                "batch",
                f"batch size ({size}x{size})",
                "images/s",
                series("batch", lambda r: r["size"] == size),
                "log",
            ),
            reporting.Panel(
                "input size",
                f"input side (batch {largest})",
                "images/s",
                series("size", lambda r: r["batch"] == largest),
            ),
        ],
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=["inception_resnet_v2", "inception_v4", "inception_v3", "inception_resnet_v1"],
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 32])
    p.add_argument("--profile-models", nargs="*", default=["inception_v4", "inception_resnet_v2"])
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    p.add_argument("--xla", type=lambda s: s == "on", nargs="+", default=[False, True], metavar="off|on")
    p.add_argument("--train-batch-sizes", type=int, nargs="*", default=[32])
    p.add_argument("--image-size", type=int, default=299, help="input side of every row but scaling")
    p.add_argument("--sizes", type=int, nargs="*", default=[299, 399, 511])
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--scaling-models", nargs="*", default=["inception_v4"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument("--skip-deploy", action="store_true")
    p.add_argument("--quick", action="store_true", help="no XLA, deployment, training or scaling rows")
    p.add_argument("--output", default="docs/benchmarks.md")
    p.add_argument("--train-worker", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.train_worker:
        print(
            json.dumps(
                train_worker(args.train_worker[0], int(args.train_worker[1]), args.image_size, args.repeats)
            )
        )
        return 0
    if args.quick:
        args.xla, args.skip_deploy, args.train_batch_sizes, args.scaling_models = [False], True, [], []
        args.profile_models = []
    peak = {"float32": matmul_peak(args.matmul_size, "float32", args.repeats)}
    if any("bfloat16" in p for p in args.precisions):
        peak["bfloat16"] = matmul_peak(args.matmul_size, "bfloat16", args.repeats)
    print(json.dumps(peak), flush=True)
    inference, training, scaling, profile = [], [], [], []
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    for name in args.models:  # the report is rewritten after each model: a stopped run keeps its rows
        inference += inference_rows(args, name)
        training += training_rows(args, name)
        if name in args.profile_models:
            profile += profile_rows(args, name)
        keras.backend.clear_session()
        write_report(args, peak, inference, training, scaling, profile)
    for name in args.scaling_models:
        scaling += scaling_rows(args, name)
    write_report(args, peak, inference, training, scaling, profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
