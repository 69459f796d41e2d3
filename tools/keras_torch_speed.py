"""What Keras on PyTorch spends on layout: our inference form timed, interleaved, as Keras runs it
and with each lever, beside timm eager; writes a JSON and a markdown report (docs/gpu.md cites it).

    python tools/keras_torch_speed.py --output docs/keras-torch-cpu.md      # KERAS_BACKEND is set to torch

Keras 3's PyTorch convolution (keras/src/backend/torch/nn.py ``conv``) takes channels_last
inputs, permutes them to NCHW with ``.contiguous()`` (a copy), then converts that to PyTorch's
channels_last memory format (a second copy) before ``conv2d``; pooling copies the same way. The
ways timed (the first call of each is not timed; then ``--repeats`` rounds, each way once per
round, the order rotated):

- ``keras``: Keras as it is (eager, ``predict_on_batch``);
- ``keras, permute as a view``: the same model with Keras's ``_transpose_spatial_inputs``
  returning the permuted view (an NHWC tensor viewed as NCHW is already channels_last memory,
  so neither copy happens). A measurement of what the copies cost, not a fix shipped;
- ``keras jit_compile``: ``model.compile(jit_compile=True)``, Keras's ``torch.compile`` (not
  with ``--no-jit``);
- ``timm eager``: timm's network (random weights, channels_last), where timm is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from keras.src.backend.torch import nn as torch_nn  # noqa: E402

from keras_inception.deploy import folding as inference  # noqa: E402
from keras_inception.models import MODELS  # noqa: E402


@contextlib.contextmanager
def permute_as_view() -> Iterator[None]:
    """Within: Keras's NHWC -> NCHW permute of conv and pooling inputs is a view, not a copy."""
    saved = torch_nn._transpose_spatial_inputs
    torch_nn._transpose_spatial_inputs = lambda x: torch.permute(x, (0, 3, 1, 2))
    try:
        yield
    finally:
        torch_nn._transpose_spatial_inputs = saved


def ways(name: str, batch: int, size: int, precision: str, jit: bool) -> dict[str, Callable[[], object]]:
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    network = MODELS[name](input_shape=(size, size, 3), classifier_activation=None)
    model = inference.fold_batchnorm(network)
    model.compile(jit_compile=False)
    x = keras.random.uniform((batch, size, size, 3), -1.0, 1.0, seed=0)

    def viewed():
        with permute_as_view():
            return model.predict_on_batch(x)

    found = {"keras": lambda: model.predict_on_batch(x), "keras, permute as a view": viewed}
    if jit:
        compiled = inference.fold_batchnorm(network)  # another model of the same weights
        compiled.compile(jit_compile=True)
        found["keras jit_compile"] = lambda: compiled.predict_on_batch(x)
    try:
        import timm
    except ImportError:
        return found
    peer = timm.create_model(name, pretrained=False).eval().to(memory_format=torch.channels_last)
    images = torch.empty(batch, 3, size, size).uniform_(-1, 1).contiguous(memory_format=torch.channels_last)

    def timm_eager():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, precision == "bfloat16"):
            return peer(images).float().numpy()

    found["timm eager"] = timm_eager
    return found


def measure(calls: dict[str, Callable[[], object]], batch: int, repeats: int) -> dict[str, dict]:
    """images/s of each way: median and min over ``repeats`` interleaved rounds, after one warm-up."""
    first = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first[name] = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            rates[name].append(batch / (time.perf_counter() - start))
    return {
        n: {"median": statistics.median(v), "min": min(v), "first_call_s": first[n]} for n, v in rates.items()
    }


def agreement(calls: dict[str, Callable[[], object]]) -> float:
    """Largest relative difference of the permute-as-view logits from Keras's own (the lever
    must compute the same thing)."""
    a, b = np.asarray(calls["keras"]()), np.asarray(calls["keras, permute as a view"]())
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


def cpu_name() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {os.cpu_count()} cores"


def report(result: dict) -> str:
    base = result["rates"]["keras"]["median"]
    lines = [
        f"# Keras on PyTorch: where inference time goes ({result['cpu']})",
        "",
        f"Written by `{result['command']}` on {result['date']}: {result['model']} inference form, "
        f"batch {result['batch']}, {result['image_size']}x{result['image_size']}, {result['precision']}, "
        f"{result['repeats']} interleaved rounds, {result['threads']} PyTorch threads; "
        f"torch {result['torch']}, keras {result['keras']}"
        + (f", timm {result['timm']}" if result.get("timm") else "")
        + ".",
        "",
        "| way | images/s median (min) | vs Keras as it is | first call (s) |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in result["rates"].items():
        ratio = r["median"] / base
        first = r["first_call_s"]
        lines.append(f"| {name} | {r['median']:.2f} ({r['min']:.2f}) | {ratio:.2f}x | {first:.1f} |")
    lines += ["", f"Permute as a view against Keras's logits: {result['agreement']:.1e} relative."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="inception_v3")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (1: no OpenMP contention)")
    p.add_argument("--no-jit", action="store_true", help="leave out jit_compile (its compile takes minutes)")
    p.add_argument("--output", default="docs/keras-torch-cpu.md", help="markdown; the JSON beside it")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    calls = ways(args.model, args.batch, args.image_size, args.precision, not args.no_jit)
    result = {
        "command": " ".join(["tools/keras_torch_speed.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "keras": keras.__version__,
        "timm": sys.modules["timm"].__version__ if "timm" in sys.modules else None,
        "model": args.model,
        "batch": args.batch,
        "image_size": args.image_size,
        "precision": args.precision,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "rates": measure(calls, args.batch, args.repeats),
        "agreement": agreement(calls),
    }
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.output, "w") as f:
        f.write(report(result))
    print(report(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
