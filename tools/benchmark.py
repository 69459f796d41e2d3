"""Speed, memory and scaling of the four networks, beside peers and the machine's matmul
peak, in one run; writes docs/benchmarks.md and PNG plots.

    python tools/benchmark.py            # the full table (docs/benchmarking.md)
    python tools/benchmark.py --quick    # batch 1 and 32, float32 / bfloat16 only

Peers (--peers): keras.applications (InceptionV3, InceptionResNetV2), OpenVINO (our model
exported as float32, bfloat16 and NNCF int8) and timm (PyTorch, channels_last, bfloat16 by
autocast; tools/torch_peers.py, in a process of --torch-python's). A peer that is not
installed is named as skipped. All ways of running one network are timed interleaved: a
warm-up each, then --repeats rounds timing each once, the order rotated every round. Every
figure is the median of those calls, with min and max (the best). --frozen's call is served by a
process of its own, as timm is (frozen_case says why). Training runs each case in a fresh process
(for its peak RSS).
Every report names the CPU and its flags (keras_inception.core.cpu) and the machine's matmul limit
per precision (tools/peak.py: several sizes, each in its own process, the best call), beside
the CPU's theoretical one; a row's share is of its precision's limit (int8 and float16 rows
have none). A row faster than the limit makes the run measure it again, then flag the row and
exit 1. mixed_bfloat16 runs by default only where the CPU computes bfloat16 in hardware.
Under oneDNN's instruction-set cap (ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 machine: what an
AVX2-only CPU's kernels do) the report says so, and timm and the peak's workers run under the
same cap, as does XLA (core.cpu.cap_environment: OpenBLAS's core type, PyTorch's ATen capability,
XLA's --xla_cpu_max_isa).
Speed is never asserted in tests; tests/test_benchmark*.py run tiny configurations.
With --backend or --device, tools/gpu_benchmark.py runs instead (Keras on JAX / PyTorch beside
timm, on a GPU; docs/gpu.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __name__ == "__main__" and {a.split("=")[0] for a in sys.argv[1:]} & {"--backend", "--device"}:
    # Keras's backends and GPUs: tools/gpu_benchmark.py, which needs no TensorFlow (docs/gpu.md)
    gpu_benchmark = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_benchmark.py")
    sys.exit(runpy.run_path(gpu_benchmark)["main"](sys.argv[1:]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_inception.core import (
    cpu,  # noqa: E402
    reporting,  # noqa: E402
)
from keras_inception.deploy import (  # noqa: E402
    export,  # noqa: E402
    frozen,
    pointwise,
)
from keras_inception.deploy import folding as inference  # noqa: E402
from keras_inception.models import MODELS, multiply_adds  # noqa: E402
from keras_inception.train import training  # noqa: E402

KERAS_APPLICATIONS = {
    "inception_resnet_v2": keras.applications.InceptionResNetV2,
    "inception_v3": keras.applications.InceptionV3,
}
PEERS = ("keras.applications", "openvino", "timm")
TORCH_PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_peers.py")
PEAK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peak.py")


@functools.cache
def torch_peers() -> dict:
    """tools/torch_peers.py's names (a sibling file, loaded by path: tools/ is no package; it
    imports torch and timm only when called)."""
    return runpy.run_path(TORCH_PEERS)


def stats(rates: list[float]) -> dict:
    return {"median": float(np.median(rates)), "min": float(min(rates)), "max": float(max(rates))}


def timed(fn: Callable[[], object], repeats: int, images: int) -> dict:
    """images/s of ``fn``: median, min and max of ``repeats`` calls after one warm-up (the one
    timer, in tools/torch_peers.py, which the PyTorch workers use without TensorFlow)."""
    return torch_peers()["timed"](fn, repeats, images)


@functools.cache
def peak_tool() -> dict:
    """tools/peak.py's names (loaded by path, as torch_peers.py is)."""
    return runpy.run_path(PEAK)


def machine_peak(args) -> dict:
    """The matmul limit per precision (tools/peak.py: several sizes, each in its own process,
    the fastest call of each; or --peak's file of them) and the CPU's theoretical one."""
    info = cpu.current()
    if args.peak:
        with open(args.peak) as f:
            measured = json.load(f)
        args.peak = None  # measured again, if a row beats it: at the file's sizes
        args.peak_sizes = sorted({r["size"] for m in measured.values() for r in m["rows"]})
    else:
        precisions, why = peak_tool()["measurable"](info)
        if why:
            print(why, flush=True)
        measured = peak_tool()["measure"](args.peak_sizes, args.peak_seconds, precisions, flags=info.flags)
    mhz, source = peak_tool()["clock"](os.cpu_count())
    print(f"Clock: {mhz:.0f} MHz ({source})" if mhz else f"Clock: unknown ({source})", flush=True)
    return {
        "cpu": info.model,
        "flags": info.relevant_flags(),
        **{p: m["gflops"] for p, m in measured.items()},
        "rows": {p: m["rows"] for p, m in measured.items()},
        "theoretical": peak_tool()["theoretical"](
            os.cpu_count(), mhz, info.flags, info.vendor == "AuthenticAMD", source
        ),
    }


def build(name: str, size: int, policy: str = "float32", peer: bool = False, **shape) -> keras.Model:
    """Ours (``shape``: width, depths), or keras.applications' with ``peer``."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if peer:
            return KERAS_APPLICATIONS[name](
                weights=None, input_shape=(size, size, 3), classifier_activation=None
            )
        return MODELS[name](input_shape=(size, size, 3), classifier_activation=None, **shape)
    finally:
        keras.config.set_dtype_policy(previous)


def shape(args) -> dict:
    """Our networks' width and depths as --width / --depths give them."""
    return {"width": args.width, **({"depths": tuple(args.depths)} if args.depths else {})}


def keras_rate(model: keras.Model, batch: int, size: int, xla: bool, repeats: int) -> dict:
    return timed(keras_call(model, size, xla)(batch), repeats, batch)


def keras_call(model: keras.Model, size: int, xla: bool = False) -> Callable[[int], Callable[[], object]]:
    f = tf.function(lambda t: model(t, training=False), jit_compile=xla)

    def make(batch: int) -> Callable[[], object]:
        x = tf.random.uniform((batch, size, size, 3), -1, 1)
        return lambda: f(x).numpy()

    return make


def frozen_call(run: Callable, size: int) -> Callable[[int], Callable[[], object]]:
    def make(batch: int) -> Callable[[], object]:
        x = tf.random.uniform((batch, size, size, 3), -1, 1)
        return lambda: run(x).numpy()

    return make


def numpy_call(run: Callable[[np.ndarray], object], size: int) -> Callable[[int], Callable[[], object]]:
    def make(batch: int) -> Callable[[], object]:
        x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        return lambda: run(x)

    return make


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return export.compare(np.asarray(a, np.float32), np.asarray(b, np.float32))["cosine"]


@dataclasses.dataclass
class Case:
    """One way of running a network; ``make(batch)`` gives the call that is timed."""

    path: str
    precision: str  # float32, bfloat16, int8, float16 (LiteRT's weights)
    make: Callable[[int], Callable[[], object]]
    cosine: float = float("nan")  # logits against ours in float32 (nan: the peer's own weights)
    peer: str = ""  # "" for ours
    gflop: float | None = None  # per image; None: our network's
    batches: tuple[int, ...] = ()  # () for every batch size


def interleaved(cases: list[Case], batch: int, repeats: int, skipped: list[str], name: str) -> list:
    """``(case, images/s stats)`` of every case that runs: one warm-up each, then ``repeats``
    rounds timing each case once, in an order rotated every round."""
    calls = []
    for case in cases:
        try:
            call = case.make(batch)
            call()
            calls.append((case, call, []))
        except Exception as error:  # a peer that cannot run this shape is named, not fatal
            skipped.append(f"{case.path} ({name}, batch {batch}): {type(error).__name__}: {str(error)[:150]}")
    for r in range(repeats):
        k = r % max(len(calls), 1)
        for _, call, rates in calls[k:] + calls[:k]:
            start = time.perf_counter()
            call()
            rates.append(batch / (time.perf_counter() - start))
    return [(case, stats(rates)) for case, _, rates in calls]


def calibration(size: int) -> list[np.ndarray]:
    """int8 calibration for LiteRT and OpenVINO: 8 random images in [-1, 1]."""
    return [np.random.default_rng(i).uniform(-1, 1, (size, size, 3)).astype(np.float32) for i in range(8)]


def policy_precision(policy: str) -> str:
    return "bfloat16" if "bfloat16" in policy else "float16" if "float16" in policy else "float32"


def inference_rows(args, name: str, skipped: list[str]) -> list[dict]:
    if not args.batch_sizes:
        return []
    size = args.image_size
    fp32 = build(name, size, **shape(args))
    gflop = 2 * multiply_adds(fp32) / 1e9

    @functools.cache
    def published() -> float:  # peers run the published networks, whatever --width / --depths say
        return gflop if shape(args) == {"width": 1.0} else 2 * multiply_adds(build(name, size)) / 1e9

    probe = tf.random.uniform((4, size, size, 3), -1, 1, seed=0)
    reference = fp32(probe, training=False).numpy()
    cases = []
    for policy in args.precisions:
        model = fp32 if policy == "float32" else build(name, size, policy, **shape(args))
        if model is not fp32:
            model.set_weights(fp32.get_weights())
        folded = inference.fold_batchnorm(model)  # the inference form export runs, and predict but at batch 1
        forms = [("", model, ()), (" folded", folded, ())]  # (name, network, batches: () for all)
        if args.fuse_pointwise:  # a candidate inference-form transform, timed beside the others
            forms.append((" folded 1x1-fused", pointwise.fuse_pointwise(folded), ()))
        if name.startswith("inception_resnet"):  # batch 1 without AVX-512 keeps the scale (deploy.folding)
            kept_at = tuple(b for b in args.batch_sizes if not inference.residual_scale_folds(b))
            folded_at = tuple(b for b in args.batch_sizes if b not in kept_at)
            kept = (
                inference.fold_batchnorm(model, fold_residual_scale=False)
                if kept_at or args.residual_scale
                else None
            )
            forms[1:2] = [(" folded", net, at) for net, at in ((folded, folded_at), (kept, kept_at)) if at]
            if args.residual_scale:  # each batch's other form
                other = ((" folded, scale kept", kept, folded_at), (" folded, scale folded", folded, kept_at))
                forms += [form for form in other if form[2]]
        for form, net, batches in forms:
            agree = cosine(reference, net(probe, training=False))
            for xla in args.xla:
                path = f"Keras {policy}{form}" + (" XLA" if xla else "")
                call = keras_call(net, size, xla)
                cases.append(Case(path, policy_precision(policy), call, agree, batches=batches))
    with tempfile.TemporaryDirectory() as tmp:
        if "keras.applications" in args.peers and name in KERAS_APPLICATIONS:
            for policy in args.precisions:
                peer = keras_call(build(name, size, policy, peer=True), size)
                path = f"keras.applications {policy}"
                cases.append(
                    Case(path, policy_precision(policy), peer, peer="keras.applications", gflop=published())
                )
        if not args.skip_deploy:
            cases += deploy_cases(args, fp32, reference, probe, tmp)
        if "openvino" in args.peers:
            cases += openvino_cases(args, fp32, reference, probe, tmp, skipped)
        open_peers: list[Served] = []
        rows = []
        try:  # the frozen and timm processes end with the rows, whatever happens
            if args.frozen:  # the folded form with its weights as constants, in its own process
                for towers in args.frozen_towers:
                    cases += [
                        frozen_case(args, name, policy, towers, open_peers) for policy in args.precisions
                    ]
            if "timm" in args.peers:
                cases += timm_cases(args, name, skipped, published, open_peers)
            for batch in args.batch_sizes:
                eligible = [c for c in cases if not c.batches or batch in c.batches]
                for case, rate in interleaved(eligible, batch, args.repeats, skipped, name):
                    g = case.gflop or gflop
                    rows.append(
                        {
                            "model": name,
                            "path": case.path,
                            "precision": case.precision,
                            "peer": case.peer,
                            "batch": batch,
                            **rate,
                            "gflops": g * rate["median"],
                            "best_gflops": g * rate["max"],
                            "cosine": case.cosine,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            for peer in open_peers:
                peer.close()
    return rows


def deploy_cases(args, model, reference, probe, tmp) -> list[Case]:
    """Ours through SavedModel, LiteRT (batch 1; float32, float16 weights, int8) and ONNX Runtime."""
    size = args.image_size
    path = os.path.join(tmp, "sm")
    model.export(path, format="tf_saved_model", verbose=False)
    served = tf.saved_model.load(path)
    cases = [
        Case(
            "SavedModel float32",
            "float32",
            numpy_call(lambda x: served.serve(x).numpy(), size),
            cosine(reference, served.serve(probe)),
        )
    ]
    for quantize in ("none", "float16", "int8"):
        path = os.path.join(tmp, f"{quantize}.tflite")
        runner = export.TFLiteRunner(export.export_tflite(model, path, quantize, calibration(size)))
        precision = {"none": "float32"}.get(quantize, quantize)
        cases.append(
            Case(
                f"LiteRT {precision} (XNNPACK)",
                precision,
                numpy_call(runner, size),
                cosine(reference, runner(probe.numpy())),
                batches=(1,),
            )
        )
    try:
        run = export.onnx_runner(export.export_onnx(model, os.path.join(tmp, "m.onnx")))
        cases.append(
            Case(
                "ONNX Runtime float32",
                "float32",
                numpy_call(run, size),
                cosine(reference, run(probe.numpy())),
            )
        )
    except ImportError:
        print("onnx extra not installed: no ONNX rows")
    return cases


def openvino_precisions(info: cpu.CPU) -> tuple[list[str], str | None]:
    """The OpenVINO precisions to time on ``info``'s CPU, and why one is left out: bfloat16 only
    where the CPU computes it (elsewhere OpenVINO runs such a model in float32, and under oneDNN's
    instruction-set cap its compile fails: "Supported primitive descriptors list is empty")."""
    if info.bfloat16:
        return list(export.OPENVINO_PRECISIONS), None
    kept = [p for p in export.OPENVINO_PRECISIONS if p != "bfloat16"]
    return kept, "OpenVINO bfloat16: this CPU has no bfloat16 units (OpenVINO would run float32)"


def openvino_cases(args, model, reference, probe, tmp, skipped: list[str]) -> list[Case]:
    """Our model exported to OpenVINO (float32, bfloat16 hint, NNCF int8), run on the CPU."""
    cases = []
    precisions, why = openvino_precisions(cpu.current())
    if why:
        skipped.append(why)
    for i, precision in enumerate(precisions):
        path = os.path.join(tmp, f"{precision}.xml")
        try:
            export.export_openvino(model, path, precision, calibration(args.image_size))
        except ImportError as error:  # openvino missing: all; nncf missing: int8
            skipped.append(f"OpenVINO {'/'.join(precisions[i:])}: {error}")
            break
        run = export.openvino_runner(path)
        cases.append(
            Case(
                f"OpenVINO {precision}",
                precision,
                numpy_call(run, args.image_size),
                cosine(reference, run(probe.numpy())),
                peer="OpenVINO",
            )
        )
    return cases


@functools.cache
def timm_unavailable(python: str) -> str | None:
    """Why timm cannot run in ``python`` (tools/torch_peers.py check), or None."""
    try:
        out = subprocess.run([python, TORCH_PEERS, "check"], capture_output=True, text=True)
    except OSError as error:  # no such Python
        return f"{type(error).__name__}: {error}"
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or [f"{python} exited {out.returncode}"])[-1][:150]
    return json.loads(out.stdout.strip().splitlines()[-1])


def timm_ready(args, name: str, skipped: list[str]) -> bool:
    """Whether timm has ``name`` and runs in --torch-python; if it does not, it is named as skipped."""
    if reason := timm_unavailable(args.torch_python):
        skipped.append(f"timm: not installed in {args.torch_python} ({reason})")
        return False
    return name in torch_peers()["NAMES"]


class Served:
    """A network served by a process of its own (``command``: tools/torch_peers.py serve, or this
    tool's --frozen-worker), one call per batch size written to its stdin (torch_peers.answer);
    ``make(batch)`` gives one call. It greets with ``ready``, and a worker that measured its
    logits' agreement with our float32 model adds that cosine."""

    def __init__(self, command: list[str]):
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        greeting = self.process.stdout.readline().split()
        if greeting[:1] != ["ready"]:
            self.close()
            raise RuntimeError(f"{' '.join(command)} did not start")
        self.cosine = float(greeting[1]) if len(greeting) > 1 else float("nan")

    def make(self, batch: int) -> Callable[[], object]:
        def call() -> float:
            self.process.stdin.write(f"{batch}\n")
            self.process.stdin.flush()
            if not (reply := self.process.stdout.readline()):
                raise RuntimeError(f"the served process exited ({self.process.poll()})")
            return float(reply)

        return call

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def timm_cases(
    args, name: str, skipped: list[str], gflop: Callable[[], float], open_peers: list
) -> list[Case]:
    if not timm_ready(args, name, skipped):
        return []
    cases = []
    for precision in dict.fromkeys(map(policy_precision, args.precisions)):
        path = f"timm {precision}" + (" autocast" if precision == "bfloat16" else "") + " channels_last"
        try:
            command = [args.torch_python, TORCH_PEERS, "serve", name, precision]
            open_peers.append(Served([*command, "--image-size", str(args.image_size)]))
        except RuntimeError as error:  # timm imports but cannot build this network: named, not fatal
            skipped.append(f"{path} ({name}): {error}")
            continue
        cases.append(Case(path, precision, open_peers[-1].make, peer="timm", gflop=gflop()))
    return cases


def frozen_case(args, name: str, policy: str, towers: int, served: list[Served]) -> Case:
    """Our folded network's frozen call (keras_inception.deploy.frozen) in a process of its own.
    Which kernel a batch-1 convolution runs depends on what ran its shapes before in the process
    (TensorFlow and oneDNN cache their primitives process-wide): under the AVX2 cap on an Intel Xeon
    (family 6 model 167), Inception-v3's
    frozen call after its Keras model ran 76 of its 95 convolutions with the GEMM kernel of a
    variable filter (alone: none), and the Keras model after the frozen call 61 of 95 with brgemm
    (alone: 10). Beside the Keras models the frozen call led them by 1.02-1.05x; alone, by 1.4x."""
    served.append(Served([*worker_command(args), "--frozen-worker", name, policy, str(towers)]))
    path = f"Keras {policy} folded frozen" + (f", {towers} towers" if towers > 1 else "")
    return Case(path, policy_precision(policy), served[-1].make, served[-1].cosine)


def frozen_worker(name: str, policy: str, towers: str, size: int, **shape) -> None:
    """Serve the frozen call of a new ``name`` (folded, each batch in ``towers``) on stdin; it greets
    with its logits' cosine against the float32 model it was made from."""
    reference = build(name, size, **shape)
    model = reference if policy == "float32" else build(name, size, policy, **shape)
    if model is not reference:
        model.set_weights(reference.get_weights())
    probe = tf.random.uniform((4, size, size, 3), -1, 1, seed=0)
    run = frozen.frozen_call(inference.fold_batchnorm(model), towers=int(towers))
    agree = cosine(reference(probe, training=False).numpy(), run(probe))
    torch_peers()["answer"](frozen_call(run, size), f"ready {agree}")


def worker_command(args) -> list[str]:
    """This tool in a fresh process, with the options that shape our network."""
    command = [sys.executable, os.path.abspath(__file__), "--repeats", str(args.repeats)]
    command += ["--image-size", str(args.image_size), "--width", str(args.width)]
    return command + (["--depths", *map(str, args.depths)] if args.depths else [])


def train_worker(name: str, batch: int, size: int, repeats: int, policy: str, **shape) -> dict:
    """Training images/s and peak RSS, measured in a fresh process."""
    keras.config.set_dtype_policy(policy)
    model = MODELS[name](input_shape=(size, size, 3), **shape)
    built = torch_peers()["rss_gb"]("VmRSS")  # before the optimizer's slots, as timm's is
    training.compile_model(model, training.Recipe.plain(), steps_per_epoch=1, top_k_metrics=False)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = np.eye(1000, dtype=np.float32)[np.arange(batch) % 1000]
    rate = timed(lambda: model.train_on_batch(x, y), repeats, batch)
    return {
        "model": name,
        "who": "ours",
        "precision": policy_precision(policy),
        "batch": batch,
        **rate,
        "built_rss_gb": built,  # the runtime and the model, before the first step
        "peak_rss_gb": torch_peers()["rss_gb"](),  # VmHWM: not the parent's, as ru_maxrss would be
    }


def _worker(command: list[str], row: dict) -> dict:
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        return {**row, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def training_rows(args, name: str, skipped: list[str]) -> list[dict]:
    """Ours and timm's training step, each run in a fresh process (for its peak RSS), in
    --train-rounds rounds whose order alternates (ours first, then timm first); a row holds
    the median of the rounds' medians, the min and max of all timed steps, the highest RSS."""
    rows = []
    timm = "timm" in args.peers and timm_ready(args, name, skipped)
    common = ["--repeats", str(args.repeats), "--image-size", str(args.image_size)]
    for policy in args.train_precisions:
        for batch in args.train_batch_sizes:
            row = {"model": name, "precision": policy_precision(policy), "batch": batch}
            commands = {"ours": [*worker_command(args), "--train-worker", name, str(batch), policy]}
            if timm:
                peer = [args.torch_python, TORCH_PEERS, "train", name, str(batch), row["precision"]]
                commands["timm"] = peer + common
            runs: dict[str, list[dict]] = {who: [] for who in commands}
            for r in range(args.train_rounds):
                for who in list(commands)[:: 1 if r % 2 == 0 else -1]:
                    runs[who].append(_worker(commands[who], {**row, "who": who}))
                    print(json.dumps(runs[who][-1]), flush=True)
            for who, done in runs.items():
                failed = [d for d in done if "error" in d]
                if failed:
                    rows.append(failed[0])
                    continue
                rows.append(
                    {
                        **row,
                        "who": who,
                        "median": float(np.median([d["median"] for d in done])),
                        "min": min(d["min"] for d in done),
                        "max": max(d["max"] for d in done),
                        "rounds": len(done),
                        "built_rss_gb": max(d["built_rss_gb"] for d in done),
                        "peak_rss_gb": max(d["peak_rss_gb"] for d in done),
                    }
                )
    return rows


def scaling_rows(args, name: str) -> list[dict]:
    rows = []
    for size in args.sizes:
        model = build(name, size, **shape(args))
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
    model = build(name, args.image_size, **shape(args))
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
    gpus = tf.config.list_physical_devices("GPU")
    accelerator = f"{len(gpus)} GPU" if gpus else "no GPU"
    onednn = (
        "on" if inference.tensorflow_onednn() else "off (its Eigen kernels)"
    )  # TF_ENABLE_ONEDNN_OPTS, the CPU
    versions = f"TensorFlow {tf.__version__} (oneDNN {onednn}), Keras {keras.__version__}"
    return f"{cpu.current().describe()}, {os.cpu_count()} cores, {accelerator}, {versions}"


def find(rows: list[dict], model: str, path: str, batch: int) -> dict | None:
    return next((r for r in rows if (r["model"], r["path"], r["batch"]) == (model, path, batch)), None)


OURS_FOR = {  # which of our Keras paths a peer's precision is compared with (first one measured)
    "float32": ("Keras float32 folded", "Keras float32"),
    "bfloat16": ("Keras mixed_bfloat16 folded", "Keras mixed_bfloat16"),
    "int8": ("Keras mixed_bfloat16 folded", "Keras mixed_bfloat16", "Keras float32"),
}
ALSO_OURS = (  # each its own pair (and the rows named after one: the frozen call's towers)
    "Keras float32 folded frozen",
    "Keras float32 folded 1x1-fused",
    "Keras float32 folded, scale kept",
    "Keras float32 folded, scale folded",
)


def share(r: dict, peak: dict) -> str:
    """Share of the matmul peak of the row's precision (float32 and bfloat16; int8 and
    float16 rows have no measured peak, so no share)."""
    if r["precision"] not in ("float32", "bfloat16") or r["precision"] not in peak:
        return "-"  # (no bfloat16 peak under an ISA cap that hides the bfloat16 units)
    return f"{r['gflops'] / peak[r['precision']]:.0%}"


def over_peak(rows: list[dict], peak: dict) -> list[dict]:
    """The rows whose best call beat the matmul peak of their precision (a peak measured too low)."""
    return [
        r
        for r in rows
        if r.get("precision", "float32") in ("float32", "bfloat16")
        and r.get("precision", "float32") in peak
        and r.get("best_gflops", r.get("gflops", 0)) > peak[r.get("precision", "float32")]
    ]


def peer_pairs(inference: list[dict]) -> list[tuple[dict, dict]]:
    """``(peer row, our row)``: each peer against our Keras path at its precision."""
    pairs = []
    for r in inference:
        if r["peer"]:
            found = (find(inference, r["model"], p, r["batch"]) for p in OURS_FOR.get(r["precision"], ()))
            if ours := next((o for o in found if o), None):
                pairs.append((r, ours))
            if r["precision"] == "float32":
                pairs += [
                    (r, o)
                    for o in inference
                    if (o["model"], o["batch"]) == (r["model"], r["batch"])
                    and o["path"].startswith(ALSO_OURS)
                ]
    return pairs


def peak_lines(peak: dict) -> list[str]:
    """The peak's paragraph: measured per precision, beside the theoretical limit."""
    theory = peak["theoretical"]
    sizes = sorted({r["size"] for rows in peak["rows"].values() for r in rows})
    best = {p: max(rows, key=lambda r: r["gflops"]) for p, rows in peak["rows"].items()}
    libraries = {p: sorted({r["library"] for r in rows}) for p, rows in peak["rows"].items()}

    def source(p: str) -> str:
        if peak[p] > best[p]["gflops"]:
            return f"twice the float32 peak; its best matmul {best[p]['gflops']:.1f}, {best[p]['library']}"
        return f"{best[p]['library']} {best[p]['size']}x{best[p]['size']}"

    measured = ", ".join(f"{p} {peak[p]:.1f} GFLOP/s ({source(p)})" for p in best)
    through = "; ".join(f"{p} through {', '.join(libraries[p])}" for p in libraries)
    lines = [
        f"Machine limit (tools/peak.py): {measured}; the fastest call of n x n matmuls, n in "
        f"{', '.join(map(str, sizes))}, each size in its own process ({through})"
        + (
            "; where bfloat16 runs on the float32 FMA pipes (AVX512_BF16, no AMX), at least twice the "
            "float32 peak"
            if "bfloat16" in best
            else ""
        )
        + ". Shares are of these.",
    ]
    if theory["mhz"]:
        per = theory["flop_per_cycle_per_core"]
        source = theory.get("clock_source", "/proc/cpuinfo")
        caveat = (
            "a core that boosts above the reported clock can beat it"
            if source.startswith("/proc/cpuinfo")
            else "an upper bound: a core may run vector code below its integer clock"
        )
        lines[-1] += (
            f" Theoretical at {theory['mhz']:.0f} MHz ({source}) x {theory['cores']} cores: "
            + ", ".join(
                f"{p} {theory[p]:.1f} GFLOP/s ({per[p]} FLOP/cycle/core; measured: {peak[p] / theory[p]:.0%})"
                for p in per
                if p in peak  # bfloat16 is not measured under an ISA cap that hides it (tools/peak.py)
            )
            + f" (FLOP/cycle as tools/peak.py assumes them; {caveat})."
        )
    if peak.get("exceeded"):
        over = ", ".join(peak["exceeded"])
        lines[-1] += f" Rows above 100% of the peak, measured again after them: {over}."
    elif peak.get("remeasured"):
        lines[-1] += " Measured again after a row beat the first measurement; no row beats this one."
    return lines


def write_report(
    args, peak: dict, inference: list, training: list, scaling: list, profile: list = (), skipped: list = ()
) -> None:
    f = lambda r: f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})"  # noqa: E731
    skipped = list(dict.fromkeys(skipped))
    lines = [
        "# Benchmarks",
        "",
        f"Measured by `tools/benchmark.py` on {datetime.date.today()}: {machine()}.",
        f"Images/s: median of {args.repeats} timed calls after a warm-up (min-max in brackets; the "
        "best is the max), every way of running a network timed interleaved with the others in "
        f"rounds; {args.image_size}x{args.image_size} inputs unless stated.",
        "",
        *peak_lines(peak),
    ]
    if shape(args) != {"width": 1.0}:
        depths = tuple(args.depths) if args.depths else "as published"
        lines += [
            "",
            f"Ours are reduced (width {args.width}, depths {depths}); the peers are the published networks.",
        ]
    pairs = peer_pairs(inference)
    train_pairs = [
        (r, o)
        for r in training
        if r.get("who") == "timm" and "error" not in r
        for o in training
        if o.get("who") == "ours"
        and "error" not in o
        and (o["model"], o["precision"], o["batch"]) == (r["model"], r["precision"], r["batch"])
    ]
    lines += ["", "## Ours against peers (same run)"]
    if pairs:
        lines += [
            "",
            "ours/peer above 1 means ours is faster. Ours is our Keras model at the peer's precision "
            "(int8: our lowest precision measured); keras.applications and timm have their own random "
            "weights, OpenVINO runs our exported model. Share: of the matmul peak of the row's precision "
            "(int8 and float16: none measured, no share).",
            "",
        ]
        lines += reporting.table(
            ["model", "batch", "peer", "peer images/s (best)", "ours", "ours images/s (best)", "ours/peer",
             "ours/peer (best)", "share of peak: peer, ours"],
            [
                [
                    r["model"], r["batch"], r["path"], f"{r['median']:.2f} ({r['max']:.2f})", o["path"],
                    f"{o['median']:.2f} ({o['max']:.2f})", f"{o['median'] / r['median']:.2f}x",
                    f"{o['max'] / r['max']:.2f}x", f"{share(r, peak)}, {share(o, peak)}",
                ]
                for r, o in pairs
            ],
        )  # fmt: skip
    if train_pairs:
        lines += [
            "",
            f"Training step (each case in a fresh process, {args.train_rounds} rounds in alternating "
            "order; median of the rounds' medians):",
            "",
        ]
        lines += reporting.table(
            ["model", "precision", "batch", "timm images/s", "ours images/s", "ours/timm",
             "peak RSS GB: timm, ours", "RSS GB after build: timm, ours"],
            [
                [r["model"], r["precision"], r["batch"], f"{r['median']:.2f}", f"{o['median']:.2f}",
                 f"{o['median'] / r['median']:.2f}x", f"{r['peak_rss_gb']:.2f}, {o['peak_rss_gb']:.2f}",
                 f"{r['built_rss_gb']:.2f}, {o['built_rss_gb']:.2f}"]
                for r, o in train_pairs
            ],
        )  # fmt: skip
    lines += ["", "Skipped: " + ("; ".join(skipped) if skipped else "none") + "."]
    if inference:
        lines += ["", "## Inference", ""]
        lines += reporting.table(
            [
                "model",
                "path",
                "batch",
                "images/s",
                "GFLOP/s",
                "share of matmul peak",
                "logits cosine vs fp32",
            ],
            [
                [
                    r["model"],
                    r["path"],
                    r["batch"],
                    f(r),
                    f"{r['gflops']:.1f}",
                    share(r, peak),
                    f"{r['cosine']:.6f}",
                ]
                for r in inference
            ],
        )
    bf16 = [(r, find(inference, r["model"], "Keras float32", r["batch"])) for r in inference]
    bf16 = [(r, base) for r, base in bf16 if base and r["path"] == "Keras mixed_bfloat16"]
    if bf16:
        lines += ["", "### mixed_bfloat16 against float32", ""]
        lines += reporting.table(
            ["model", "batch", "speed-up", "logits cosine"],
            [
                [r["model"], r["batch"], f"{r['median'] / base['median']:.2f}x", f"{r['cosine']:.6f}"]
                for r, base in bf16
            ],
        )
    folded = [
        (r, find(inference, r["model"], r["path"].removesuffix(" folded"), r["batch"])) for r in inference
    ]
    folded = [(r, base) for r, base in folded if base and r["path"].endswith(" folded")]
    if folded:
        lines += ["", "### BatchNorm folded (the inference form) against the model as built", ""]
        lines += reporting.table(
            ["model", "path", "batch", "speed-up"],
            [
                [r["model"], base["path"], r["batch"], f"{r['median'] / base['median']:.2f}x"]
                for r, base in folded
            ],
        )
    if training:
        lines += [
            "",
            "## Training (RMSProp; ours `compile_model(model, Recipe.plain())`, the stem recomputed, "
            "and `train_on_batch`; timm autocast; each in a fresh process)",
            "",
        ]
        lines += reporting.table(
            ["model", "who", "precision", "batch", "images/s", "peak RSS (GB)", "RSS after build (GB)"],
            [
                [
                    r["model"],
                    r["who"],
                    r["precision"],
                    r["batch"],
                    f(r),
                    f"{r['peak_rss_gb']:.2f}",
                    f"{r['built_rss_gb']:.2f}",
                ]
                if "error" not in r
                else [r["model"], r["who"], r["precision"], r["batch"], f"failed: {r['error']}", "-", "-"]
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
        "skipped": skipped,
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


def default_policies() -> list[str]:
    """float32, and mixed_bfloat16 beside it where the CPU computes bfloat16 fast (core.cpu)."""
    return list(dict.fromkeys(["float32", cpu.default_policy()]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models",
        nargs="+",
        default=["inception_resnet_v2", "inception_v4", "inception_v3", "inception_resnet_v1"],
    )
    p.add_argument(
        "--batch-sizes", type=int, nargs="*", default=[1, 16, 32], help="inference batches (no value: none)"
    )
    p.add_argument("--profile-models", nargs="*", default=["inception_v4", "inception_resnet_v2"])
    p.add_argument(
        "--precisions",
        nargs="+",
        default=default_policies(),
        help="inference policies (default: float32, and mixed_bfloat16 with bfloat16 hardware)",
    )
    p.add_argument("--xla", type=lambda s: s == "on", nargs="+", default=[False, True], metavar="off|on")
    p.add_argument(
        "--peers",
        nargs="*",
        choices=PEERS,
        default=list(PEERS),
        help="peers run beside ours (none: no peers)",
    )
    p.add_argument(
        "--torch-python",
        default=sys.executable,
        help="the Python that runs the timm peer (one with torch, torchvision and timm; default: this one)",
    )
    p.add_argument("--train-batch-sizes", type=int, nargs="*", default=[32], help="training step batches")
    p.add_argument(
        "--train-rounds", type=int, default=2, help="fresh processes per training case, in alternating order"
    )
    p.add_argument(
        "--train-precisions",
        nargs="*",
        choices=("float32", "mixed_bfloat16"),
        default=default_policies(),
        help="ours in this policy, timm in float32 or bfloat16 autocast (default: as --precisions)",
    )
    p.add_argument("--image-size", type=int, default=299, help="input side of every row but scaling")
    p.add_argument("--sizes", type=int, nargs="*", default=[299, 399, 511])
    p.add_argument("--scaling-batches", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--scaling-models", nargs="*", default=["inception_v4"])
    p.add_argument("--width", type=float, default=1.0, help="our networks' channel multiplier (peers: 1)")
    p.add_argument("--depths", type=int, nargs=3, help="our networks' blocks per stage (peers: published)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--peak-sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="matmul sizes of the peak"
    )
    p.add_argument("--peak-seconds", type=float, default=3.0, help="seconds of calls per peak size")
    p.add_argument("--peak", help="the peak from this file (tools/peak.py --output) instead of measuring it")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep --output's rows of other models, and its peak unless --peak is given (a long run split)",
    )
    p.add_argument(
        "--fuse-pointwise",
        action="store_true",
        help="also time the inference form with sibling 1x1 convolutions fused (deploy.pointwise)",
    )
    p.add_argument(
        "--residual-scale",
        action="store_true",
        help="also time Inception-ResNet's folded form with its residual scale the other way than "
        "predict runs it at each batch (folded, but kept apart at batch 1 on TensorFlow without AVX-512; "
        "deploy.folding)",
    )
    p.add_argument(
        "--frozen",
        action="store_true",
        help="also time the folded form with its weights as constants (keras_inception.deploy.frozen)",
    )
    p.add_argument(
        "--frozen-towers",
        type=int,
        nargs="+",
        metavar="N",
        help="with --frozen, its rows: one per N, each batch split into N towers run side by side "
        "(frozen_call's towers; 1, the default: the whole batch)",
    )
    p.add_argument("--skip-peers", action="store_true", help="the same as --peers with none")
    p.add_argument("--skip-deploy", action="store_true", help="no SavedModel, LiteRT or ONNX rows")
    p.add_argument(
        "--quick",
        action="store_true",
        help="no XLA, deployment, training, profile or scaling rows (peers run)",
    )
    p.add_argument("--output", default="docs/benchmarks.md")
    p.add_argument("--train-worker", nargs=3, metavar=("MODEL", "BATCH", "POLICY"), help=argparse.SUPPRESS)
    p.add_argument("--frozen-worker", nargs=3, metavar=("MODEL", "POLICY", "TOWERS"), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.train_rounds < 1:
        p.error(f"--train-rounds must be at least 1, got {args.train_rounds}")
    if args.frozen_towers and not args.frozen:
        p.error("--frozen-towers needs --frozen")
    args.frozen_towers = list(dict.fromkeys(args.frozen_towers or [1]))  # each N one row
    if min(args.frozen_towers) < 1:
        p.error(f"--frozen-towers must be at least 1, got {min(args.frozen_towers)}")
    os.environ.update(cpu.cap_environment())  # ONEDNN_MAX_CPU_ISA: timm and the peak's workers obey it too
    if args.train_worker:
        name, batch, policy = args.train_worker
        print(
            json.dumps(train_worker(name, int(batch), args.image_size, args.repeats, policy, **shape(args)))
        )
        return 0
    if args.frozen_worker:
        frozen_worker(*args.frozen_worker, args.image_size, **shape(args))
        return 0
    for policy in args.precisions + args.train_precisions:
        cpu.check_precision(policy)  # mixed_bfloat16 asked for on a CPU without bfloat16 units: one warning
    if args.quick:
        args.xla, args.skip_deploy, args.train_batch_sizes, args.scaling_models = [False], True, [], []
        args.profile_models = []
    if args.skip_peers:
        args.peers = []
    inference, training, scaling, profile, skipped = [], [], [], [], []
    if args.append and os.path.exists(json_path := os.path.splitext(args.output)[0] + ".json"):
        with open(json_path) as f:
            kept = json.load(f)
        peak = kept["peak"]
        keep = lambda rows: [r for r in rows if r["model"] not in args.models]  # noqa: E731
        inference, training, profile = keep(kept["inference"]), keep(kept["training"]), keep(kept["profile"])
        scaling = [] if args.scaling_models else kept["scaling"]
        skipped = kept["skipped"]
    if not args.append or args.peak or not inference + training + profile:
        peak = machine_peak(args)
    print(json.dumps(peak), flush=True)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    for name in args.models:  # the report is rewritten after each model: a stopped run keeps its rows
        inference += inference_rows(args, name, skipped)
        training += training_rows(args, name, skipped)
        if name in args.profile_models:
            profile += profile_rows(args, name)
        keras.backend.clear_session()
        write_report(args, peak, inference, training, scaling, profile, skipped)
    for name in args.scaling_models:
        scaling += scaling_rows(args, name)
    if over := over_peak(inference + profile, peak):  # a peak measured in a noisy moment: again, once
        again = machine_peak(args)
        for p in again["rows"]:  # the precisions measured (no bfloat16 under an ISA cap that hides it)
            if again[p] > peak.get(p, 0):
                peak[p], peak["rows"][p] = again[p], again["rows"][p]
        over = over_peak(inference + profile, peak)
        peak["remeasured"] = True
        peak["exceeded"] = [
            f"{r['model']} {r.get('path') or r['part']} batch {r.get('batch', 16)}" for r in over
        ]
    write_report(args, peak, inference, training, scaling, profile, skipped)
    if peak.get("exceeded"):
        print(f"rows above the matmul peak: {peak['exceeded']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
