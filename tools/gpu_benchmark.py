"""Our networks on Keras's JAX, PyTorch or TensorFlow backend beside timm, on a GPU (or the CPU),
one process per case; no TensorFlow needed (docs/gpu.md).

    python tools/benchmark.py --backend jax torch --device gpu     # or tools/gpu_benchmark.py
    python tools/gpu_benchmark.py --device cpu --batch 2 --train-batch 2 --image-size 75 \\
        --width 0.25 --depths 1 1 1 --steps 2 --warmup 1        # a tiny run
    python tools/gpu_benchmark.py --table-from OUT/gpu_benchmark.jsonl   # the table again

Cases, most important first: the device's matmul peak (bfloat16, float32 at full precision
and, on a GPU, TF32; several sizes, the best of many calls), the networks' FLOP counts, then
per precision (bfloat16 = ``mixed_bfloat16`` / timm's autocast first, then float32 as each
framework runs it by default) inference (ours: the inference form, BatchNorm folded by
:func:`keras_inception.inference.fold_batchnorm`, and the model as built; timm eager and
``torch.compile``; channels_last) and the training step (ours: plain SGD and slim's recipe,
``compile_model(Recipe.slim())``; timm: SGD). Each case runs in a fresh process
(``sys.executable``) under a per-case timeout, and the whole run under ``--budget-s``: the
cases left when it is spent are listed as skipped. Every finished case is appended to
``gpu_benchmark.jsonl`` in ``--out-dir`` (default ``$OUT``, else the current folder); the
markdown table ``gpu_benchmark.md`` is written at the end. images/s is the median (and min)
of ``--steps`` timed steps after ``--warmup`` untimed ones, inputs already on the device;
peak memory is JAX's ``peak_bytes_in_use``, PyTorch's ``max_memory_allocated``,
TensorFlow's ``get_memory_info`` peak (on a CPU: the process's peak RSS); the share of the
matmul peak counts 2 x multiply-adds per image (:func:`keras_inception.multiply_adds`, our
network's count for timm too) and 3x that for a training step.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

MODELS = ("inception_v3", "inception_v4", "inception_resnet_v2")
FIRST_MODELS = ("inception_resnet_v2", "inception_v3", "inception_v4")  # IRv2 first: the 50% target
BACKENDS = ("jax", "torch", "tensorflow")
PRECISIONS = ("bfloat16", "float32", "float32-highest")
INFERENCE = ("folded", "built")
TRAINING = ("sgd", "recipe")
TIMM = ("eager", "compile")
VERSIONS = ("keras", "jax", "jaxlib", "torch", "timm", "tensorflow", "numpy", "keras-inception")
JSONL, TABLE, LOG = "gpu_benchmark.jsonl", "gpu_benchmark.md", "gpu_benchmark.log"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
MIN_CASE_S = 15.0
ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "CUDA_VISIBLE_DEVICES",
)  # a case is not started with less of the budget left


@dataclasses.dataclass(frozen=True)
class Case:
    """One process's work: ``kind`` is peak, flops, inference or train."""

    kind: str
    who: str = "ours"  # ours, timm
    backend: str = ""  # Keras's backend (ours); torch (timm)
    model: str = ""
    variant: str = ""  # folded, built (ours' inference); sgd, recipe (ours' training); eager, compile (timm)
    precision: str = ""
    batch: int = 0
    jit: bool | None = None  # Keras on PyTorch: jit_compile (torch.compile) or eager; None elsewhere

    @property
    def name(self) -> str:
        parts = [
            self.kind,
            self.who if self.model else "",
            self.backend,
            self.model,
            self.variant,
            self.precision,
            {True: "jit_compile", False: "eager", None: ""}[self.jit],
        ]
        return " ".join(p for p in parts if p) + (f" batch {self.batch}" if self.batch else "")


def plan(args) -> list[Case]:
    """Every case of the run, the most important first: bfloat16 before float32, inference
    before training, ours (first backend) and timm of one network together."""
    cases = [Case("peak"), Case("flops")]

    def ours(kind: str, backend: str, model: str, variant: str, precision: str, every_jit: bool = False):
        """The case, or on PyTorch one per --torch-jit value (the first alone unless ``every_jit``)."""
        batch = args.batch if kind == "inference" else args.train_batch
        if backend != "torch":
            return [Case(kind, "ours", backend, model, variant, precision, batch)]
        jits = args.torch_jit if every_jit else args.torch_jit[:1]
        return [Case(kind, "ours", backend, model, variant, precision, batch, jit == "true") for jit in jits]

    first, others = args.backend[0], args.backend[1:]
    timm = [v for v in TIMM if v in args.timm]
    for precision in args.precisions:
        if "inference" in args.work:
            for model in args.models:
                if "folded" in args.variants:
                    cases += ours("inference", first, model, "folded", precision, every_jit=True)
                cases += [Case("inference", "timm", "torch", model, v, precision, args.batch) for v in timm]
            for backend in others:
                if "folded" in args.variants:
                    for m in args.models:
                        cases += ours("inference", backend, m, "folded", precision, every_jit=True)
        if "train" in args.work:
            for model in args.models:
                if "sgd" in args.variants:
                    cases += ours("train", first, model, "sgd", precision)
                if "eager" in timm:
                    cases.append(Case("train", "timm", "torch", model, "eager", precision, args.train_batch))
            for backend in others:
                if "sgd" in args.variants:
                    for m in args.models:
                        cases += ours("train", backend, m, "sgd", precision)
        if "inference" in args.work and "built" in args.variants:
            for backend in args.backend:
                for m in args.models:
                    cases += ours("inference", backend, m, "built", precision)
        if "train" in args.work:
            if "recipe" in args.variants:
                for backend in args.backend:
                    for m in args.models:
                        cases += ours("train", backend, m, "recipe", precision)
            if "compile" in timm:  # its compile takes minutes on a GPU (the issue saw over 4)
                cases += [
                    Case("train", "timm", "torch", m, "compile", precision, args.train_batch)
                    for m in args.models
                ]
    return cases


# ---------------------------------------------------------------- the worker (one case per process)


def device_check(device: str, framework: str) -> str:
    """The device's name, after checking that ``framework`` sees a GPU when ``device`` is gpu."""
    if framework == "jax":
        import jax

        found = jax.devices()[0]
        if device == "gpu" and found.platform != "gpu":
            raise RuntimeError(f"no GPU visible to JAX (its devices: {jax.devices()})")
        return found.device_kind if device == "gpu" else cpu_name()
    if framework == "torch":
        import torch

        if device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("no GPU visible to PyTorch (torch.cuda.is_available() is False)")
            return torch.cuda.get_device_name()
        return cpu_name()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise RuntimeError("no GPU visible to TensorFlow")
    if not gpus:
        return cpu_name()
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def rates(step: Callable[[], object], batch: int, warmup: int, steps: int) -> dict:
    """images/s of ``step`` (which returns once the device is done): median and min of
    ``steps`` timed calls after ``warmup`` untimed ones, and the seconds of the first call."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    timed = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        timed.append(batch / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(timed),
        "images_per_s_min": min(timed),
        "steps": steps,
        "warmup": warmup,
        "first_step_s": first,
    }


def rss_peak_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1e6


def peak_memory(framework: str, device: str) -> dict:
    """The case's peak memory on the device (on a CPU: the process's peak RSS)."""
    if device == "gpu" and framework == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return {
            "peak_memory_gb": stats.get("peak_bytes_in_use", float("nan")) / 1e9,
            "memory": "peak_bytes_in_use",
        }
    if device == "gpu" and framework == "torch":
        import torch

        return {"peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9, "memory": "max_memory_allocated"}
    if device == "gpu" and framework == "tensorflow":
        import tensorflow as tf

        return {
            "peak_memory_gb": tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1e9,
            "memory": "peak",
        }
    return {"peak_memory_gb": rss_peak_gb(), "memory": "peak RSS"}


def precision_mode(precision: str, framework: str, device: str, who: str) -> tuple[str, bool]:
    """How the case computes, in words, and whether its float32 runs as TF32 (its matmul
    peak is then TF32's)."""
    from keras_inception.core import precision as fp

    if precision == "bfloat16":
        return ("bf16 (autocast)" if who == "timm" else "bf16 (mixed_bfloat16)"), False
    if device != "gpu":
        return "float32", False
    settings = fp.state()
    if framework == "jax":
        value = settings["jax_default_matmul_precision"]
        tf32 = value in (None, "default", "tensorfloat32", "bfloat16_3x")
        return f"float32, JAX matmul precision {value or 'default'} (TF32 {'on' if tf32 else 'off'})", tf32
    if framework == "torch":
        convs, matmuls = settings["torch_cudnn_allow_tf32"], settings["torch_matmul_allow_tf32"]
        words = f"float32, TF32 convolutions {'on' if convs else 'off'}, matmuls {'on' if matmuls else 'off'}"
        return words, bool(convs)
    tf32 = bool(settings["tensorflow_tf32"])
    return f"float32, TF32 {'on' if tf32 else 'off'}", tf32


def precision_scope(precision: str):
    from keras_inception.core.precision import full_precision

    return full_precision() if precision == "float32-highest" else contextlib.nullcontext()


def peak_worker(spec: dict) -> dict:
    """The device's matmul rate (TFLOP/s) per precision: an n x n product per size, the
    fastest of ``peak_calls`` calls; PyTorch where it is installed, else JAX."""
    device = spec["device"]
    try:
        import torch
    except ImportError:
        torch = None
    framework = "torch" if torch is not None else "jax"
    name = device_check(device, framework)
    precisions = ["bfloat16", "float32"] + (["tf32"] if device == "gpu" else [])
    result: dict = {"framework": framework, "device_name": name, "peak": {}}
    if framework == "torch":
        target = torch.device("cuda" if device == "gpu" else "cpu")
        result["cuda"] = torch.version.cuda if device == "gpu" else None

        def sync():
            if device == "gpu":
                torch.cuda.synchronize()

        def product(n: int, dtype: str) -> Callable[[], object]:
            a = torch.randn(n, n, device=target).to(getattr(torch, dtype))
            b = torch.randn(n, n, device=target).to(getattr(torch, dtype))
            return lambda: (torch.mm(a, b), sync())
    else:
        import jax
        import jax.numpy as jnp

        result["cuda"] = None

        def product(n: int, dtype: str) -> Callable[[], object]:
            a = jax.random.normal(jax.random.key(0), (n, n), dtype)
            b = jax.random.normal(jax.random.key(1), (n, n), dtype)
            f = jax.jit(jnp.matmul)
            return lambda: f(a, b).block_until_ready()

    for precision in precisions:
        rows = []
        for n in spec["peak_sizes"]:
            scope = tf32_scope(framework) if precision == "tf32" else full_precision_scope()
            with scope:
                call = product(n, "float32" if precision == "tf32" else precision)
                best = fastest(call, spec["peak_calls"])
            rows.append({"size": n, "tflops": 2 * n**3 / best / 1e12})
        result["peak"][precision] = {"tflops": max(r["tflops"] for r in rows), "rows": rows}
    return result


def full_precision_scope():
    from keras_inception.core.precision import full_precision

    return full_precision()


@contextlib.contextmanager
def tf32_scope(framework: str) -> Iterator[None]:
    """float32 products as TF32 (PyTorch's flag on, JAX's precision ``tensorfloat32``)."""
    if framework == "jax":
        import jax

        with jax.default_matmul_precision("tensorfloat32"):
            yield
        return
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def fastest(call: Callable[[], object], calls: int) -> float:
    """Seconds of the fastest of ``calls`` calls after one warm-up."""
    call()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def build_ours(spec: dict, case: Case, **kwargs):
    """Our ``case.model`` at the run's size, width and depths, giving logits."""
    from keras_inception.models import MODELS

    size = spec["image_size"]
    shape = {"width": spec["width"], **({"depths": tuple(spec["depths"])} if spec["depths"] else {})}
    return MODELS[case.model](input_shape=(size, size, 3), classifier_activation=None, **shape, **kwargs)


def flops_worker(spec: dict) -> dict:
    """GFLOP per image (2 x multiply-adds) of each network at the run's size (built on the CPU)."""
    from keras_inception.models import multiply_adds

    gflop = {}
    for model in spec["models"]:
        network = build_ours(spec, Case("flops", model=model))
        gflop[model] = 2 * multiply_adds(network) / 1e9
    return {"gflop": gflop}


def ours_worker(spec: dict, case: Case) -> dict:
    """Our network on Keras's ``case.backend``: inference through ``predict_on_batch`` (the
    inference form or as built), or a training step through ``train_on_batch``."""
    import keras
    import numpy as np

    from keras_inception.deploy import folding as inference

    device, batch, size = spec["device"], case.batch, spec["image_size"]
    name = device_check(device, case.backend)
    keras.config.set_dtype_policy("mixed_bfloat16" if case.precision == "bfloat16" else "float32")
    jit = bool(case.jit) if case.backend == "torch" else True
    with precision_scope(case.precision):
        mode, tf32 = precision_mode(case.precision, case.backend, device, "ours")
        recipe = case.variant == "recipe"
        model = build_ours(spec, case, aux_logits=recipe)
        x = keras.random.uniform((batch, size, size, 3), -1.0, 1.0, seed=0)
        if case.kind == "inference":
            if case.variant == "folded":
                model = inference.fold_batchnorm(model)
            model.compile(jit_compile=jit)
            step = lambda: model.predict_on_batch(x)  # noqa: E731 - returns NumPy: the device is done
        else:
            labels = np.arange(batch) % 1000
            if recipe:
                from keras_inception.train import training

                training.compile_model(
                    model, training.Recipe.slim(), 1000, jit_compile=jit, top_k_metrics=False
                )
                y = keras.ops.convert_to_tensor(np.eye(1000, dtype="float32")[labels])
                y = [y, y]
            else:
                model.compile(
                    optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    jit_compile=jit,
                )
                y = keras.ops.convert_to_tensor(labels)
            step = lambda: model.train_on_batch(x, y)  # noqa: E731 - returns the loss as NumPy
        timing = rates(step, batch, spec["warmup"], spec["steps"])
    return {
        "device_name": name,
        "precision_mode": mode,
        "tf32": tf32,
        "jit_compile": jit,
        **timing,
        **peak_memory(case.backend, device),
    }


def timm_worker(spec: dict, case: Case) -> dict:
    """timm's network (random weights, channels_last, bf16 by autocast), eager or ``torch.compile``."""
    import timm
    import torch

    device, batch, size = spec["device"], case.batch, spec["image_size"]
    name = device_check(device, "torch")
    target = torch.device("cuda" if device == "gpu" else "cpu")
    with precision_scope(case.precision):
        mode, tf32 = precision_mode(case.precision, "torch", device, "timm")
        model = timm.create_model(case.model, pretrained=False).to(target, memory_format=torch.channels_last)
        forward = torch.compile(model) if case.variant == "compile" else model
        x = torch.empty(batch, 3, size, size, device=target).uniform_(-1, 1)
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(target.type, torch.bfloat16, enabled=case.precision == "bfloat16")
        if case.kind == "inference":
            model.eval()

            def step():
                with torch.inference_mode(), autocast:
                    return forward(x).float().sum().item()
        else:
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            y = torch.arange(batch, device=target) % 1000

            def step():
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = torch.nn.functional.cross_entropy(forward(x), y)
                loss.backward()
                optimizer.step()
                return loss.item()

        timing = rates(step, batch, spec["warmup"], spec["steps"])
    return {
        "device_name": name,
        "precision_mode": mode,
        "tf32": tf32,
        **timing,
        **peak_memory("torch", device),
    }


def worker(spec: dict) -> dict:
    case = Case(**spec["case"])
    if case.kind == "peak":
        return peak_worker(spec)
    if case.kind == "flops":
        return flops_worker(spec)
    return timm_worker(spec, case) if case.who == "timm" else ours_worker(spec, case)


# ---------------------------------------------------------------- the run (the parent process)


def versions() -> dict:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def gpu_info() -> dict:
    """nvidia-smi's name and driver of the first GPU (empty without it)."""
    if not shutil.which("nvidia-smi"):
        return {}
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        line = subprocess.run(
            query, capture_output=True, text=True, timeout=30, check=True
        ).stdout.splitlines()[0]
    except (subprocess.SubprocessError, IndexError, OSError):
        return {}
    name, driver, memory = (part.strip() for part in line.split(",", 2))
    return {"gpu": name, "driver": driver, "gpu_memory": memory}


def cpu_name() -> str:
    """The CPU's model name, its core count and which of the matmul flags it has."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    present = [flag for flag in CPU_FLAGS if flag in flags]
    return f"{model}, {os.cpu_count()} cores" + (f" ({' '.join(present)})" if present else "")


def case_env(args, case: Case) -> dict:
    """The case's environment: Keras's backend (ours: the case's; timm and the peak: PyTorch,
    where it is installed, so that no JAX takes the GPU's memory beside it), the CPU alone on
    --device cpu and for the FLOP count."""
    env = dict(os.environ)
    torch_side = "torch" if versions()["torch"] else "jax"
    env["KERAS_BACKEND"] = case.backend if case.who == "ours" and case.backend else torch_side
    if case.kind == "flops":
        env["KERAS_BACKEND"] = args.backend[0]
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device == "cpu" or case.kind == "flops":  # the FLOP count builds the networks on the CPU
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_case(args, case: Case, timeout: float, log) -> dict:
    """The case's record: its worker's result, or why there is none."""
    spec = {**settings(args), "case": dataclasses.asdict(case)}
    command = [sys.executable, os.path.abspath(__file__), "worker", json.dumps(spec)]
    start = time.perf_counter()
    record = {"kind": case.kind, "case": dataclasses.asdict(case), "name": case.name}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=case_env(args, case)
        )
    except subprocess.TimeoutExpired as error:
        output = (error.stderr or b"").decode() if isinstance(error.stderr, bytes) else (error.stderr or "")
        log.write(f"== {case.name}: timeout after {timeout:.0f} s\n{output[-4000:]}\n")
        return {
            **record,
            "status": "timeout",
            "reason": f"timed out after {timeout:.0f} s",
            "wall_s": timeout,
        }
    wall = time.perf_counter() - start
    log.write(f"== {case.name}: exit {done.returncode} in {wall:.1f} s\n{done.stderr[-4000:]}\n")
    log.flush()
    results = [line[len("RESULT ") :] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1][:300] if lines else f"exit status {done.returncode}"
        return {**record, "status": "failed", "reason": reason, "wall_s": wall}
    return {**record, "status": "ok", **json.loads(results[-1]), "wall_s": wall}


def settings(args) -> dict:
    return {
        "device": args.device,
        "image_size": args.image_size,
        "width": args.width,
        "depths": args.depths,
        "steps": args.steps,
        "warmup": args.warmup,
        "models": args.models,
        "peak_sizes": args.peak_sizes,
        "peak_calls": args.peak_calls,
        "torch_jit": args.torch_jit,
    }


def run(args) -> int:
    out_dir = args.out_dir or os.environ.get("OUT") or "."
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, JSONL)
    start = time.perf_counter()
    header = {
        "kind": "run",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(),
        **gpu_info(),
        "versions": versions(),
        "python": platform.python_version(),
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        "command": " ".join(["tools/gpu_benchmark.py", *sys.argv[1:]]),
        "budget_s": args.budget_s,
        "case_timeout_s": args.case_timeout_s,
        **settings(args),
        "batch": args.batch,
        "train_batch": args.train_batch,
    }
    cases = plan(args)
    with open(path, "w") as out, open(os.path.join(out_dir, LOG), "w") as log:
        out.write(json.dumps(header) + "\n")
        for index, case in enumerate(cases):
            left = args.budget_s - (time.perf_counter() - start)
            if left < MIN_CASE_S:
                for skipped in cases[index:]:
                    record = {"kind": skipped.kind, "case": dataclasses.asdict(skipped), "name": skipped.name}
                    reason = f"the run's budget of {args.budget_s:.0f} s was spent"
                    out.write(json.dumps({**record, "status": "skipped", "reason": reason}) + "\n")
                print(f"budget spent: {len(cases) - index} of {len(cases)} cases skipped", flush=True)
                break
            record = run_case(args, case, min(args.case_timeout_s, left), log)
            out.write(json.dumps(record) + "\n")
            out.flush()
            print(f"[{index + 1}/{len(cases)}] {case.name}: {summary(record)}", flush=True)
    table = render(read(path))
    with open(os.path.join(out_dir, TABLE), "w") as f:
        f.write(table)
    print(f"wrote {path} and {os.path.join(out_dir, TABLE)}")
    return 0


def summary(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record['reason']}"
    if record["kind"] == "peak":
        return ", ".join(f"{p} {v['tflops']:.3g} TFLOP/s" for p, v in record["peak"].items())
    if record["kind"] == "flops":
        return ", ".join(f"{m} {g:.3g} GFLOP" for m, g in record["gflop"].items())
    rate, low, memory = record["images_per_s"], record["images_per_s_min"], record["peak_memory_gb"]
    return f"{rate:.1f} images/s (min {low:.1f}), {memory:.2f} GB"


def read(path: str) -> list[dict]:
    """The records of the last run in a JSONL file (from its last ``run`` line on)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    starts = [i for i, r in enumerate(records) if r.get("kind") == "run"]
    if not starts:
        raise ValueError(f"{path} holds no run (no line of kind 'run')")
    return records[starts[-1] :]


# ---------------------------------------------------------------- the table


def render(records: list[dict]) -> str:
    """The markdown report of one run's records."""
    run_info, results = records[0], records[1:]
    by_kind = {r["kind"]: r for r in results if r["kind"] in ("peak", "flops") and r["status"] == "ok"}
    peak = by_kind.get("peak", {}).get("peak", {})
    gflop = by_kind.get("flops", {}).get("gflop", {})
    device = by_kind.get("peak", {}).get("device_name")
    v = run_info["versions"]
    lines = [
        f"# Inception on {run_info.get('gpu') or device or run_info['cpu']} ({run_info['device']})",
        "",
        f"Written by `{run_info['command']}` on {run_info['date']}.",
        "",
        f"- Device: {run_info.get('gpu', 'no GPU')}"
        + (f", driver {run_info['driver']}, {run_info.get('gpu_memory')}" if run_info.get("driver") else "")
        + (f", CUDA {by_kind['peak']['cuda']} (PyTorch's)" if by_kind.get("peak", {}).get("cuda") else "")
        + f"; CPU: {run_info['cpu']}",
        *(
            ["- Environment: " + ", ".join(f"{k}={v}" for k, v in run_info["environment"].items())]
            if run_info.get("environment")
            else []
        ),
        "- Versions: "
        + ", ".join(f"{k} {v[k]}" for k in VERSIONS if v.get(k))
        + f", Python {run_info['python']}",
        f"- Settings: image size {run_info['image_size']}, width {run_info['width']}"
        + (f", depths {run_info['depths']}" if run_info["depths"] else "")
        + f"; {run_info['steps']} timed steps after {run_info['warmup']} warm-up; one process per case,"
        f" each under {run_info['case_timeout_s']:.0f} s, the run under {run_info['budget_s']:.0f} s;"
        f" Keras on PyTorch: jit_compile {' then '.join(run_info['torch_jit'])}"
        " (inference form: each; other cases: the first)",
    ]
    if peak:
        parts = [
            f"{p} {m['tflops']:.4g} TFLOP/s (sizes {', '.join(str(r['size']) for r in m['rows'])})"
            for p, m in peak.items()
        ]
        lines.append(
            f"- Measured matmul peak ({by_kind['peak']['framework']}, fastest call): " + "; ".join(parts)
        )
    if gflop:
        lines.append(
            "- FLOP per image (2 x multiply-adds; a training step counts 3x): "
            + ", ".join(f"{m} {g:.3g} GFLOP" for m, g in gflop.items())
        )
    lines += [
        "",
        "| work | network | who | backend | how | precision | batch | images/s median (min) | peak memory | "
        "share of matmul peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    missing = []
    for r in results:
        if r["kind"] in ("peak", "flops"):
            if r["status"] != "ok":
                missing.append(r)
            continue
        c = r["case"]
        if r["status"] != "ok":
            missing.append(r)
            continue
        how = {"folded": "inference form", "built": "as built", "sgd": "SGD", "recipe": "slim's recipe"}
        how = how.get(c["variant"], "torch.compile" if c["variant"] == "compile" else c["variant"])
        if c["who"] == "ours" and c["backend"] == "torch":
            how += f", jit_compile={r['jit_compile']}"
        share = ""
        key = "bfloat16" if c["precision"] == "bfloat16" else "tf32" if r.get("tf32") else "float32"
        full = run_info["width"] == 1.0 and not run_info["depths"]  # timm's networks are always full
        if c["model"] in gflop and key in peak and (c["who"] == "ours" or full):
            achieved = r["images_per_s"] * gflop[c["model"]] * (3 if c["kind"] == "train" else 1) / 1e3
            share = f"{100 * achieved / peak[key]['tflops']:.1f}% of {key}"
            if achieved > peak[key]["tflops"]:
                share += " (above the measured peak: measure the peak with larger --peak-sizes)"
        backend = "PyTorch" if c["who"] == "timm" else f"Keras on {c['backend']}"
        lines.append(
            f"| {c['kind']} | {c['model']} | {c['who']} | {backend} | {how} | {r['precision_mode']} "
            f"| {c['batch']} | "
            f"{r['images_per_s']:,.1f} ({r['images_per_s_min']:,.1f}) | {r['peak_memory_gb']:.2f} GB "
            f"({r['memory']}) | {share} |"
        )
    if missing:
        lines += ["", "Not run:", ""]
        lines += [f"- {r['name']}: {r['status']}, {r['reason']}" for r in missing]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--backend", nargs="+", choices=BACKENDS, default=["jax"], help="Keras's backends, first first"
    )
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(FIRST_MODELS), help="in this order")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["bfloat16", "float32"])
    p.add_argument("--work", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    p.add_argument("--variants", nargs="+", choices=INFERENCE + TRAINING, default=list(INFERENCE + TRAINING))
    p.add_argument("--timm", nargs="*", choices=TIMM, default=list(TIMM), help="timm's cases (none: --timm)")
    p.add_argument("--batch", type=int, default=256, help="inference batch")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--width", type=float, default=1.0, help="our networks' width (timm's stay full)")
    p.add_argument("--depths", type=int, nargs=3, help="our networks' block counts (timm's stay full)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
    p.add_argument("--peak-sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    p.add_argument("--peak-calls", type=int, default=20)
    p.add_argument(
        "--torch-jit",
        nargs="+",
        choices=("true", "false"),
        default=["true", "false"],
        help="Keras on PyTorch's jit_compile (torch.compile): the inference form runs with each, "
        "every other case with the first",
    )
    p.add_argument("--budget-s", type=float, default=420.0, help="the whole run's seconds")
    p.add_argument("--case-timeout-s", type=float, default=180.0)
    p.add_argument("--out-dir", help="default $OUT, else the current folder")
    p.add_argument("--table-from", metavar="JSONL", help="only write the table of this file's last run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        print("RESULT " + json.dumps(worker(json.loads(argv[1]))), flush=True)
        return 0
    args = parse(argv)
    if args.table_from:
        table = render(read(args.table_from))
        target = os.path.join(os.path.dirname(os.path.abspath(args.table_from)), TABLE)
        with open(target, "w") as f:
            f.write(table)
        print(table, end="")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
