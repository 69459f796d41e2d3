"""How closely training on JAX and PyTorch follows the TensorFlow backend: the figures of
``docs/backends-training.md``.

Runs ``tests/training_job.py``'s five steps of slim's recipe (reduced Inception-ResNet-v2,
float32, fixed batches) here on TensorFlow and, one process each, on the other backends, and
writes ``docs/backends-training.json``: per backend the per-step losses and
``training_job.agreement`` (the largest relative loss gap; per kind of variable, the distance
between the runs over how far TensorFlow's moved), with the CPU and the versions.

    python tools/backend_agreement.py [--backends torch jax] [--out docs/backends-training.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "tensorflow"  # the reference runs in this process
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402
import training_job  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_backend(backend: str, workdir: str) -> tuple[list[float], dict[str, np.ndarray], float]:
    """``training_job.py`` on ``backend``: its losses, final variables and wall seconds."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT}
    start = time.perf_counter()
    job = os.path.join(ROOT, "tests", "training_job.py")
    done = subprocess.run([sys.executable, job, workdir], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{backend}: {done.stderr[-3000:]}")
    with np.load(os.path.join(workdir, f"{backend}.npz")) as f:
        variables = {k: f[k] for k in f.files}
    return variables.pop("losses").tolist(), variables, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch", "jax"])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "backends-training.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        initial = training_job.prepare(workdir)
        start = time.perf_counter()
        reference = training_job.train_steps(workdir)
        results = {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "versions": {p: version(p) for p in ("keras", "tensorflow", "jax", "torch")},
            "setup": {
                "model": "inception_resnet_v2, depths (1, 1, 1), width 0.25, aux head, no dropout",
                "image_size": training_job.SIZE,
                "batch": training_job.BATCH,
                "steps": training_job.STEPS,
                "learning_rate": training_job.RECIPE.learning_rate,
                "dtype": "float32",
            },
            "tensorflow": {"losses": reference[0], "seconds": time.perf_counter() - start},
        }
        for backend in args.backends:
            losses, variables, seconds = run_backend(backend, workdir)
            figures = training_job.agreement(reference, (losses, variables), initial)
            results[backend] = {"losses": losses, "seconds": seconds, "agreement": figures}
            print(backend, figures, flush=True)
            write(results, args.out)  # after each backend: JAX's compiles take minutes on a CPU
    write(results, args.out)
    return results


def write(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
