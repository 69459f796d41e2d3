"""Where one training step's time and memory go, op by op, for one network on TensorFlow.

    python tools/train_profile.py inception_resnet_v2 --batch 32 --precision mixed_bfloat16

Memory: the process's RSS after importing TensorFlow, after building the model and its
optimizer, after the first step (tracing and running it) and its peak over the steps, beside
TensorFlow's own count of its tensors, current and peak (the tool turns on TensorFlow's BFC
allocator for the CPU, which keeps that count). What the RSS holds beyond the tensors is the
runtime: libraries, the traced graph, the executor.

Time: one step (``train_on_batch``, RMSProp as slim's) under TensorFlow's profiler; each op's
time summed by phase (forward, backward, the rest: loss, optimizer, casts, and the AddN
that sums a tensor's gradients from its consumers) and op type, with
the kernel size of convolutions and matmuls. Ops run on two inter-op threads at once, so the
sums exceed the step's wall time; the shares are of the sum.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import runpy
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"  # TensorFlow counts its tensors only with it

RSS = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peers.py"))["rss_gb"]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

from keras_inception.core import atomic as files  # noqa: E402
from keras_inception.core import cpu, reporting  # noqa: E402
from keras_inception.models import MODELS  # noqa: E402
from keras_inception.train import training  # noqa: E402

IMPORTED_RSS = RSS("VmRSS")  # after TensorFlow, Keras and the package are imported
KERNEL = re.compile(r"_(\d+x\d+)")


def op_times(logdir: str, model_name: str) -> list[dict]:
    """The profiled ops' seconds, summed by (phase, op type, kernel size)."""
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    seconds: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if line.name == "python":
                continue  # the Python thread's events span the whole step
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith(("ExecutorState", "Threadpool")):
                    continue  # an op's event is named "scope/op:OpType"
                op_type = name.rsplit(":", 1)[1].strip()
                if op_type.startswith("__inference") or op_type == "Run":
                    continue  # the step's function call, around all its ops
                if "gradient_tape/" in name:
                    phase = "backward"
                elif name.startswith(model_name):
                    phase = "forward"
                else:
                    phase = "rest"
                kernel = KERNEL.findall(name) if re.search("Conv|MatMul", op_type) else []
                key = (phase, op_type, kernel[-1] if kernel else "")
                seconds[key] += event.duration_ps / 1e12
                calls[key] += 1
    total = sum(seconds.values())
    return [
        {"phase": p, "op": o, "kernel": k, "calls": calls[(p, o, k)], "seconds": s, "share": s / total}
        for (p, o, k), s in seconds.most_common()
    ]


def profile(args) -> dict:
    cpu.check_precision(args.precision)
    keras.config.set_dtype_policy(args.precision)
    shape = {"width": args.width, **({"depths": tuple(args.depths)} if args.depths else {})}
    model = MODELS[args.model](weights=None, input_shape=(args.image_size,) * 2 + (3,), **shape)
    training.compile_model(model, training.Recipe.plain(), steps_per_epoch=1, top_k_metrics=False)
    memory = {"import": IMPORTED_RSS, "built": RSS("VmRSS")}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    y = np.eye(1000, dtype=np.float32)[np.arange(args.batch) % 1000]
    model.train_on_batch(x, y)
    memory["first step"] = RSS("VmRSS")
    for _ in range(args.steps - 1):
        model.train_on_batch(x, y)
    memory["peak"] = RSS()
    tensors = {k: v / 1e9 for k, v in tf.config.experimental.get_memory_info("CPU:0").items()}
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        model.train_on_batch(x, y)
        step_s = time.perf_counter() - start
        tf.profiler.experimental.stop()
        ops = op_times(logdir, model.name)
    return {
        "model": args.model,
        "precision": args.precision,
        "batch": args.batch,
        "rss_gb": memory,
        "tensors_gb": tensors,
        "step_s": step_s,
        "ops": ops,
    }


def report(r: dict, top: int) -> str:
    rss, tensors = r["rss_gb"], r["tensors_gb"]
    lines = [
        f"# Training step profile: {r['model']}, {r['precision']}, batch {r['batch']}",
        "",
        f"By `python tools/train_profile.py` (TensorFlow {tf.__version__}, Keras {keras.__version__}).",
        "",
        "## Memory (GB)",
        "",
    ]
    lines += reporting.table(
        ["RSS after import", "after build", "after step 1", "peak", "tensors: peak", "now",
         "peak RSS - tensors' peak"],
        [[f"{rss['import']:.2f}", f"{rss['built']:.2f}", f"{rss['first step']:.2f}", f"{rss['peak']:.2f}",
          f"{tensors['peak']:.2f}", f"{tensors['current']:.2f}", f"{rss['peak'] - tensors['peak']:.2f}"]],
    )  # fmt: skip
    phases: collections.Counter = collections.Counter()
    for op in r["ops"]:
        phases[op["phase"]] += op["seconds"]
    lines += ["", f"## Time: one step of {r['step_s']:.2f} s", ""]
    lines += reporting.table(
        ["phase", "op seconds", "share"],
        [[p, f"{s:.3f}", f"{s / sum(phases.values()):.1%}"] for p, s in phases.most_common()],
    )
    lines += [""]
    lines += reporting.table(
        ["phase", "op type", "kernel", "calls", "seconds", "share"],
        [[o["phase"], o["op"], o["kernel"], o["calls"], f"{o['seconds']:.3f}", f"{o['share']:.1%}"]
         for o in r["ops"][:top]],
    )  # fmt: skip
    return "\n".join(lines) + "\n"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument(  # mixed_bfloat16 by default only where the CPU computes it in hardware
        "--precision", choices=("float32", "mixed_bfloat16"), default=cpu.default_policy()
    )
    p.add_argument("--image-size", type=positive, default=299)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier of our network")
    p.add_argument("--depths", type=positive, nargs=3, help="blocks per stage of our network")
    p.add_argument("--steps", type=positive, default=3, help="steps before the profiled one")
    p.add_argument("--top", type=positive, default=25, help="op rows in the report")
    p.add_argument("--output", help="write the report (Markdown) here, and its JSON beside it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = profile(args)
    text = report(result, args.top)
    print(text)
    if args.output:
        with files.atomic_files([args.output, os.path.splitext(args.output)[0] + ".json"]) as (md, js):
            with open(md, "w") as f:
                f.write(text)
            with open(js, "w") as f:
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
