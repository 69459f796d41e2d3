"""timm's Inception networks, the PyTorch peers of tools/benchmark.py; no TensorFlow is imported here.

    python tools/torch_peers.py train inception_v3 32 bfloat16 --repeats 5 --image-size 299

prints one JSON line: training images/s (median, min, max) and the process's peak RSS.
The benchmark times :func:`inference_call` beside ours and runs training here, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

NAMES = ("inception_v3", "inception_v4", "inception_resnet_v2")  # timm's names are ours
PRECISIONS = ("float32", "bfloat16")


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


def peak_rss_gb() -> float:
    """This process's peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the parent's)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1e6
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def create(name: str):
    """``timm.create_model(name, pretrained=False)``, ImageNet's 1000 classes, channels_last."""
    import timm
    import torch

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

        return call

    return make


def train_worker(name: str, batch: int, precision: str, repeats: int, size: int) -> dict:
    """Training images/s (RMSProp as slim's, cross-entropy, bfloat16 by autocast) and peak RSS."""
    import torch

    model = create(name).train()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, momentum=0.9, eps=1.0)
    x, y = _images(batch, size), torch.arange(batch) % 1000

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
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train"])
    p.add_argument("model", choices=NAMES)
    p.add_argument("batch", type=int)
    p.add_argument("precision", choices=PRECISIONS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image-size", type=int, default=299)
    args = p.parse_args(argv)
    print(json.dumps(train_worker(args.model, args.batch, args.precision, args.repeats, args.image_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
