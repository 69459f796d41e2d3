"""timm's Inception networks, the PyTorch peers of tools/benchmark.py; no TensorFlow is imported here.

It runs in whichever Python has torch, torchvision and timm (the benchmark's --torch-python),
always in a process of its own:

    python tools/torch_peers.py check                    # one JSON line: why timm cannot run, or null
    python tools/torch_peers.py serve inception_v3 bfloat16 --image-size 299
    python tools/torch_peers.py train inception_v3 32 bfloat16 --repeats 5 --image-size 299

``serve`` builds one network, prints ``ready``, then for each batch size read from stdin runs one
inference call and prints its seconds, so the benchmark can interleave it with its own calls.
``train`` prints one JSON line: training images/s (median, min, max) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

NAMES = ("inception_v3", "inception_v4", "inception_resnet_v2")  # timm's names are ours
PRECISIONS = ("float32", "bfloat16")
WARM_UP = 2  # untimed calls per new batch size, before the benchmark's own warm-up call


def unavailable() -> str | None:
    """Why timm cannot run here (it, or the torchvision it imports, is missing or broken), or None."""
    try:
        import timm  # noqa: F401
    except Exception as error:  # a torchvision built for another torch raises RuntimeError
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return None


def timed(fn: Callable[[], object], repeats: int, images: int) -> dict:
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(images / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def rss_gb(field: str = "VmHWM") -> float:
    """This process's resident memory: ``VmHWM``, its peak, which starts afresh at exec
    (ru_maxrss keeps the parent's), or ``VmRSS``, what it holds now."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1e6
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6 if field == "VmHWM" else float("nan")


def configure() -> int:
    """PyTorch set up as TensorFlow runs beside it: one intra-op thread per CPU this process may
    use, and denormals flushed to zero (TensorFlow's CPU kernels flush them too); the threads."""
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    return threads


def create(name: str):
    """``timm.create_model(name, pretrained=False)``, ImageNet's 1000 classes, channels_last
    (after :func:`configure`)."""
    import timm
    import torch

    configure()
    return timm.create_model(name, pretrained=False).to(memory_format=torch.channels_last)


def _images(batch: int, size: int):
    import torch

    return torch.empty(batch, 3, size, size).uniform_(-1, 1).contiguous(memory_format=torch.channels_last)


def inference_call(name: str, size: int, precision: str) -> Callable[[int], Callable[[], object]]:
    """``make(batch)`` -> one inference call (inference_mode; bfloat16 through CPU autocast)."""
    import torch

    model = create(name).eval()

    def make(batch: int) -> Callable[[], object]:
        x = _images(batch, size)

        def call():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, precision == "bfloat16"):
                return model(x).float().numpy()

        for _ in range(WARM_UP):  # oneDNN picks and caches its kernels for this shape
            call()
        return call

    return make


def train_worker(name: str, batch: int, precision: str, repeats: int, size: int) -> dict:
    """Training images/s (RMSProp as slim's, cross-entropy, bfloat16 by autocast) and peak RSS."""
    import torch

    model = create(name).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, momentum=0.9, eps=1.0)
    x, y = _images(batch, size), torch.arange(batch) % 1000
    built = rss_gb("VmRSS")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, precision == "bfloat16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return {
        "model": name,
        "who": "timm",
        "precision": precision,
        "batch": batch,
        **timed(step, repeats, batch),
        "built_rss_gb": built,
        "peak_rss_gb": rss_gb(),
    }


def answer(make: Callable[[int], Callable[[], object]], greeting: str = "ready") -> None:
    """Print ``greeting``, then for each batch size read from stdin run one call of
    ``make(batch)`` (made once per batch size) and print its seconds. tools/benchmark.py serves
    its own frozen call with this too."""
    calls: dict[int, Callable[[], object]] = {}
    print(greeting, flush=True)
    for line in sys.stdin:
        batch = int(line)
        if batch not in calls:  # one input per batch size, made once
            calls[batch] = make(batch)
        call = calls[batch]
        start = time.perf_counter()
        call()
        print(time.perf_counter() - start, flush=True)


def serve(name: str, precision: str, size: int) -> None:
    """One inference call per batch size read from stdin; its seconds on stdout."""
    answer(inference_call(name, size, precision))


def main(argv: list[str] | None = None) -> int:
    # GNU OpenMP's threads spin at every barrier by default; on a CPU that other processes share,
    # a spinning thread whose partner is descheduled waits out whole time slices (timm's
    # Inception-v3 at batch 1: 0.35-0.59 images/s spinning, 3.1-3.9 passive, on a 2-core AMD
    # EPYC under load). TensorFlow's thread pool yields; so must the peer. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="why timm cannot run in this Python (JSON), or null")
    serve_p = commands.add_parser("serve", help="inference calls on demand (batch sizes on stdin)")
    train_p = commands.add_parser("train", help="training images/s and peak RSS (one JSON line)")
    for sub in (serve_p, train_p):
        sub.add_argument("model", choices=NAMES)
        if sub is train_p:
            sub.add_argument("batch", type=int)
        sub.add_argument("precision", choices=PRECISIONS)
        sub.add_argument("--image-size", type=int, default=299)
    train_p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.command == "check":
        print(json.dumps(unavailable()))
    elif args.command == "serve":
        serve(args.model, args.precision, args.image_size)
    else:
        print(json.dumps(train_worker(args.model, args.batch, args.precision, args.repeats, args.image_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
