"""The NumPy checkpoint reader against TensorFlow's, on one generated full-size checkpoint.

    python tools/checkpoint_reader_speed.py --family inception_resnet_v2 --repeats 5

Writes every variable of the family's public checkpoint (random values) with TF's own
Saver, as V1 and as V2, then reads each file with ``keras_inception.weights.tf_checkpoint``
and with ``tf.train.load_checkpoint(...).get_tensor`` (every variable), interleaved, and
checks that both give the same bytes. Prints the median wall and CPU seconds of each and
the ratio pure / TensorFlow (below 1: the pure reader is faster). Files are in the page
cache for both readers (just written, then read in turn).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from slim_kit import random_variables, write_checkpoint  # noqa: E402

from keras_inception.weights import tf_checkpoint  # noqa: E402


def read_tf(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


READERS = {"pure": tf_checkpoint.read, "tensorflow": read_tf}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(read, prefix: str) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    values = read(prefix)
    return time.perf_counter() - wall, time.process_time() - cpu, values


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="inception_resnet_v2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variables", type=int, default=0, help="only the first N variables (0: all)")
    args = p.parse_args(argv)
    variables = random_variables(args.family)
    if args.variables:
        variables = dict(list(variables.items())[: args.variables])
    size = sum(v.nbytes for v in variables.values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prefixes = {v: write_checkpoint(variables, f"{tmp}/{v}/model.ckpt", v) for v in ("V1", "V2")}
        times = {(v, r): [] for v in prefixes for r in READERS}
        for _ in range(args.repeats):
            for version, prefix in prefixes.items():
                results = {}
                for name, read in READERS.items():
                    wall, cpu, results[name] = timed(read, prefix)
                    times[version, name].append((wall, cpu))
                pure, ref = results["pure"], results["tensorflow"]
                if sorted(pure) != sorted(ref) or any(pure[k].tobytes() != ref[k].tobytes() for k in ref):
                    raise SystemExit(f"{version}: the readers disagree")
                del results, pure, ref
    print(f"{args.family}: {len(variables)} variables, {size / 1e6:.0f} MB of float32; CPU: {cpu_model()}, "
          f"{os.cpu_count()} cores; median of {args.repeats} interleaved repeats; files in the page cache")
    print(f"{'format':6} {'reader':10} {'wall s':>7} {'CPU s':>7} {'pure/TF wall':>13}")
    for version in prefixes:
        tf_wall = statistics.median(w for w, _ in times[version, "tensorflow"])
        for name in READERS:
            wall = statistics.median(w for w, _ in times[version, name])
            cpu = statistics.median(c for _, c in times[version, name])
            ratio = f"{wall / tf_wall:13.2f}" if name == "pure" else ""
            print(f"{version:6} {name:10} {wall:7.3f} {cpu:7.3f} {ratio}")
            rows.append({"format": version, "reader": name, "wall": wall, "cpu": cpu})
    print("bytes identical between the readers for every variable, every repeat")
    return rows


if __name__ == "__main__":
    main()
