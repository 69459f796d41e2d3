"""Reproduce the paper's two findings at small scale; writes docs/reproduction.md.

    python tools/reproduce.py residual-speedup --data ../shared/datasets/cifar10/cifar10-train.tar.gz
    python tools/reproduce.py residual-scaling --data ../shared/datasets/cifar10/cifar10-train.tar.gz
    python tools/reproduce.py report

residual-speedup trains Inception-v3 against Inception-ResNet-v1 and Inception-v4
against Inception-ResNet-v2 (the paper's similar-cost pairs, Figs. 21-26) at matched
multiply-adds, several seeds, recording top-1 / top-5 error against step and wall
time. residual-scaling trains a very wide Inception-ResNet-v2 (1088 and 2080 filters
in its residual blocks) at a high learning rate with residual scale 1.0 against
0.1-0.3, watching for the "death" of section 3.3. --data takes an image folder, a
.tar.gz holding one, or tfds:NAME; --image-size 299, --width 1 and --strategy mirrored
scale the same runs up.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_inception  # noqa: E402
from keras_inception import data, files, registry, reporting, training  # noqa: E402
from keras_inception.models import get, multiply_adds  # noqa: E402

OUT = "docs/reproduction"
PAIRS = {  # (non-residual, residual), depths chosen so multiply-adds match within 2% at width 0.5, 75x75
    "v3 vs IRv1": (("inception_v3", (2, 2, 1)), ("inception_resnet_v1", (1, 2, 1))),
    "v4 vs IRv2": (("inception_v4", (1, 2, 1)), ("inception_resnet_v2", (2, 7, 2))),
}
MATCH_TOLERANCE = 0.02  # relative multiply-add difference allowed within a pair
DEFAULTS = {  # per experiment: what the recorded runs used
    "residual-speedup": {"steps": 1200, "eval_every": 200, "learning_rate": 0.045},
    "residual-scaling": {"steps": 300, "eval_every": 50, "learning_rate": 0.2},
}


@functools.cache
def open_data(spec: str, seed: int) -> tuple[data.Source, data.Source]:
    """Train / validation sources; a ``.tar.gz`` of an image folder is extracted once."""
    if spec.startswith("tfds:"):
        return data.open_source(spec, "train[:90%]"), data.open_source(spec, "train[90%:]")
    if spec.endswith((".tar.gz", ".tgz")):
        target = os.path.join(
            os.path.expanduser("~"),
            ".keras",
            "datasets",
            "keras_inception",
            os.path.basename(spec).split(".")[0],
        )
        if not os.path.isdir(target):
            print(f"extracting {spec} ...", flush=True)
            with files.atomic_path(target) as staging, tarfile.open(spec) as tar:  # never half-extracted
                tar.extractall(staging, filter="data")
        folders = [os.path.join(target, d) for d in os.listdir(target)]
        spec = folders[0] if len(folders) == 1 and os.path.isdir(folders[0]) else target
    return data.split_folder(spec, 0.1, seed)


class Timer(keras.callbacks.Callback):
    """Training wall and CPU time, excluding the evaluations between epochs, and the
    machine's 1-minute load average at each mark (to tell whether wall times compare)."""

    def __init__(self):
        super().__init__()
        self.wall, self.cpu, self.marks, self.cpu_marks, self.load = 0.0, 0.0, [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.wall += time.perf_counter() - self._start
        self.cpu += time.process_time() - self._cpu_start
        self.marks.append(self.wall)
        self.cpu_marks.append(self.cpu)
        self.load.append(os.getloadavg()[0])


def provenance() -> dict:
    """Package version, commit (``-dirty`` with uncommitted changes) and machine of a run."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "package_version": keras_inception.__version__,
        "commit": commit,
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu,
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(args, name: str, seed: int, extra: dict, callbacks=()) -> dict:
    """Train one configuration for ``--steps``; evaluate every ``--eval-every`` steps."""
    started = provenance()
    keras.utils.set_random_seed(seed)
    train_src, val_src = open_data(args.data, 0)
    builder = get(name)
    strategy = training.get_strategy(args.strategy)
    size = args.image_size
    with strategy.scope():
        # BN moving averages at slim's 0.9997 would still be near their start after a
        # short run; 0.99 lets inference-mode evaluation see trained statistics.
        model = builder(input_shape=(size, size, 3), classes=train_src.num_classes, bn_momentum=0.99, **extra)
        recipe = training.Recipe.slim(learning_rate=args.learning_rate, ema_decay=None)
        steps_per_epoch = max(1, train_src.num_examples // args.batch_size)
        training.compile_model(model, recipe, steps_per_epoch, l2_biases=registry.family(name).l2_biases)
    train = data.pipeline(train_src, args.batch_size, True, size, seed=seed, repeat=True, augmentation="flip")
    val = data.pipeline(
        data.Source(val_src.dataset.take(args.eval_images), val_src.class_names, None),
        args.batch_size,
        False,
        size,
    )
    timer = Timer()
    steps = args.steps
    every = min(args.eval_every, steps)
    history = model.fit(
        train,
        validation_data=val,
        steps_per_epoch=every,
        epochs=steps // every,
        callbacks=[timer, *callbacks],
        verbose=2,
    )
    h = history.history
    evaluated = len(h.get("val_top1", []))
    return {
        "experiment": args.experiment,
        "model": name,
        "seed": seed,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()},
        "multiply_adds": multiply_adds(model),
        "parameters": model.count_params(),
        "steps": [every * (i + 1) for i in range(evaluated)],
        "wall_s": timer.marks[:evaluated],
        "cpu_s": timer.cpu_marks[:evaluated],
        "load_average": timer.load[:evaluated],
        "loss": h["loss"],
        "top1_error": [100 * (1 - a) for a in h.get("val_top1", [])],
        "learning_rate": recipe.learning_rate,
        "batch_size": args.batch_size,
        "image_size": size,
        "bn_momentum": 0.99,
        "augmentation": "flip",
        "train_examples": train_src.num_examples,
        "classes": train_src.num_classes,
        "eval_images": args.eval_images,
        "recipe": dataclasses.asdict(recipe),
        "args": {k: v for k, v in vars(args).items()},
        **started,
    }


def save(args, result: dict, experiment: str, tag: str) -> None:
    reporting.write_text(os.path.join(args.output, experiment, f"{tag}.json"), [json.dumps(result, indent=1)])


def pair_mismatch(pair: str, width: float, image_size: int) -> float:
    """Relative multiply-add difference of a pair's residual network against its plain one."""
    (plain, dp), (residual, dr) = PAIRS[pair]
    shape = (image_size, image_size, 3)
    a = multiply_adds(get(plain)(input_shape=shape, classes=10, width=width, depths=dp))
    b = multiply_adds(get(residual)(input_shape=shape, classes=10, width=width, depths=dr))
    return b / a - 1.0


def residual_speedup(args) -> None:
    for key, pair in PAIRS.items():
        if key.split()[0] not in args.pairs:
            continue
        mismatch = pair_mismatch(key, args.width, args.image_size)
        note = "matched" if abs(mismatch) <= MATCH_TOLERANCE else f"NOT matched (over {MATCH_TOLERANCE:.0%})"
        print(f"{key}: multiply-adds differ by {mismatch:+.2%}, {note}", flush=True)
        for name, depths in pair:
            for seed in args.seeds:
                result = run(args, name, seed, {"width": args.width, "depths": depths})
                result["pair"], result["pair_mismatch"] = key, mismatch
                save(args, result, "residual-speedup", f"{name}_lr{args.learning_rate}_seed{seed}")
                print(f"{name} seed {seed}: top-1 error {result['top1_error'][-1]:.1f}%", flush=True)


def residual_scaling(args) -> None:
    train_src, _ = open_data(args.data, 0)
    probe = next(iter(data.pipeline(train_src, 16, False, args.image_size)))[0]
    for seed in args.seeds:
        for scale in args.scales:
            monitor = training.ResidualDeathMonitor(probe, every=args.probe_every, stop=True)
            extra = {"width": 1.0, "depths": tuple(args.wide_depths), "scales": (scale, scale, scale)}
            result = run(args, "inception_resnet_v2", seed, extra, [monitor])
            result.update(
                scale=scale,
                died_at=monitor.died_at,
                events=monitor.events,
                zero_trace=monitor.trace,
                batch_stat_zero_trace=monitor.batch_trace,
            )
            save(args, result, "residual-scaling", f"scale{scale}_seed{seed}")
            print(f"scale {scale} seed {seed}: died at {monitor.died_at}; {monitor.events[:1]}", flush=True)


def _load(out: str, experiment: str) -> list[dict]:
    folder = os.path.join(out, experiment)
    if not os.path.isdir(folder):
        return []
    return [
        json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder)) if f.endswith(".json")
    ]


def _plot(runs: list[dict], x: str, y: str, path: str, title: str) -> None:
    def label(r: dict) -> str:
        return f"{r['model']} seed {r['seed']}" + (f" scale {r['scale']}" if "scale" in r else "")

    xlabel = {"steps": "training step", "wall_s": "training wall time (s)"}[x]
    series = {label(r): (r[x][: len(r[y])], r[y]) for r in runs}
    reporting.plot(
        path, [reporting.Panel(title, xlabel, y.replace("_", " ") + " (%)", series)], panel_width=6
    )


def _mean(values: list[float]) -> str:
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def _speedup_verdicts(speed: list[dict]) -> list[str]:
    """Per pair and learning rate: which network is ahead, at the middle and at the end."""
    out = []
    for lr in sorted({r["learning_rate"] for r in speed}, reverse=True):
        for pair, ((plain, _), (residual, _)) in PAIRS.items():
            a = [r for r in speed if r["model"] == plain and r["learning_rate"] == lr]
            b = [r for r in speed if r["model"] == residual and r["learning_rate"] == lr]
            if not a or not b:
                continue
            n = min(len(r["top1_error"]) for r in a + b)
            mid, end = max(0, n // 2 - 1), n - 1
            ea = [np.mean([r["top1_error"][i] for r in a]) for i in (mid, end)]
            eb = [np.mean([r["top1_error"][i] for r in b]) for i in (mid, end)]
            steps = a[0]["steps"]
            ahead = (
                "agrees"
                if eb[0] < ea[0] and eb[1] <= ea[1]
                else "does not agree"
                if eb[0] > ea[0]
                else "is mixed"
            )
            out.append(
                f"{pair}, learning rate {lr}: top-1 error {plain} {ea[0]:.1f}% vs {residual} {eb[0]:.1f}% "
                f"at step {steps[mid]}, {ea[1]:.1f}% vs {eb[1]:.1f}% at step {steps[end]} "
                f"(mean of {len(a)} and {len(b)} seeds): this {ahead} with the paper at this scale."
            )
    return out


def _scaling_verdict(scaling: list[dict]) -> str:
    died = {r["scale"]: r["died_at"] for r in scaling}
    scaled = [sc for sc in died if sc < 1.0]
    if died.get(1.0) and not any(died[sc] for sc in scaled):
        return "agrees with the paper: unscaled residuals died, scaled ones trained"
    if not any(died.values()):
        steps = max(r["steps"][-1] if r["steps"] else 0 for r in scaling)
        return f"does not show the paper's effect at this scale: no variant died in {steps} steps"
    return "is mixed: " + ", ".join(f"scale {k} {'died' if v else 'survived'}" for k, v in died.items())


def report(args) -> None:
    out = args.output
    lines = [
        "# Reproducing the paper's findings at small scale",
        "",
        f"Generated by `tools/reproduce.py report` from the runs in `{out}/` "
        f"({platform.machine()}, {os.cpu_count()} cores, TensorFlow {tf.__version__}).",
        "",
    ]
    speed = _load(out, "residual-speedup")
    if speed:
        r0 = speed[0]
        lines += [
            "## Residual connections and training speed (paper Figs. 21-26)",
            "",
            f"CIFAR-10-style data at {r0['image_size']}x{r0['image_size']}, batch {r0['batch_size']}, "
            f"RMSProp (0.9, momentum 0.9, epsilon 1.0), learning rate as listed x0.94 every "
            "2 epochs, label smoothing 0.1, no weight averaging, BatchNorm momentum 0.99, random flips; "
            "width multiplier "
            f"{r0.get('width')}. Error on held-out images after each evaluation interval.",
            "",
        ]
        header = [
            "pair",
            "model",
            "learning rate",
            "depths",
            "multiply-adds (M)",
            "parameters",
            "seeds",
            "final top-1 error %",
            "final top-5 error %",
            "best top-1 error %",
            "wall time (s)",
        ]
        rows = []
        rates = sorted({r["learning_rate"] for r in speed}, reverse=True)
        plots = []
        for lr in rates:
            for pair, members in PAIRS.items():
                chosen = [r for r in speed if r["learning_rate"] == lr and r["model"] in dict(members)]
                for name, _ in members:
                    runs = [r for r in chosen if r["model"] == name]
                    if not runs:
                        continue
                    first = runs[0]
                    cells = [
                        pair,
                        name,
                        lr,
                        tuple(first["depths"]),
                        f"{first['multiply_adds'] / 1e6:.1f}",
                        f"{first['parameters']:,}",
                        len(runs),
                        _mean([r["top1_error"][-1] for r in runs]),
                        _mean([r["top5_error"][-1] for r in runs]),
                        _mean([min(r["top1_error"]) for r in runs]),
                        _mean([r["wall_s"][-1] for r in runs]),
                    ]
                    rows.append(cells)
                if chosen:
                    slug = f"{pair.replace(' ', '_')}_lr{lr}"
                    for x in ("steps", "wall_s"):
                        for y in ("top1_error", "top5_error"):
                            _plot(
                                chosen,
                                x,
                                y,
                                os.path.join(out, f"{slug}_{y}_{x}.png"),
                                f"{pair}, lr {lr}: {y} vs {x}",
                            )
                    plots.append(
                        f"![{slug}]({os.path.basename(out)}/{slug}_top1_error_steps.png) "
                        f"![{slug} vs time]({os.path.basename(out)}/{slug}_top1_error_wall_s.png)"
                    )
        lines += reporting.table(header, rows)
        lines += [
            "",
            "What the runs say against the paper (residual versions train faster, Figs. 21-26):",
            "",
        ]
        lines += [f"- {sentence}" for sentence in _speedup_verdicts(speed)]
        lines += ["", *[p + "\n" for p in plots]]
    scaling = _load(out, "residual-scaling")
    if scaling:
        r0 = scaling[0]
        lines += [
            "## Residual scaling and very wide residual networks (paper section 3.3)",
            "",
            f"Inception-ResNet-v2 at width 1.0 (residual blocks of 320, 1088 and 2080 filters), depths "
            f"{tuple(r0['depths'])}, {r0['image_size']}x{r0['image_size']}, batch {r0['batch_size']}, "
            f"learning rate {r0['learning_rate']}; a probe batch's pre-pool features checked every few "
            "steps for all-zero output, and the loss for divergence.",
            "",
        ]
        rows = []
        for r in sorted(scaling, key=lambda r: -r["scale"]):
            reason = r["events"][0][1] if r["events"] else "-"
            zeros = max((z for _, z in r["zero_trace"]), default=float("nan"))
            top1 = f"{r['top1_error'][-1]:.1f}" if r["top1_error"] else "-"
            steps = r["steps"][-1] if r["steps"] else 0
            rows.append(
                [
                    r["scale"],
                    r["died_at"] or "did not die",
                    reason,
                    steps,
                    top1,
                    f"{r['loss'][-1]:.3f}",
                    f"{zeros:.3f}",
                ]
            )
        lines += reporting.table(
            [
                "residual scale",
                "died at step",
                "reason",
                "steps trained",
                "final top-1 error %",
                "final loss",
                "max zero fraction of pre-pool features",
            ],
            rows,
        )
        lines += ["", f"The run {_scaling_verdict(scaling)}."]
        _plot(
            scaling,
            "steps",
            "top1_error",
            os.path.join(out, "scaling_top1_error_steps.png"),
            "wide IRv2: top-1 error by residual scale",
        )
        lines += ["", f"![scaling]({os.path.basename(out)}/scaling_top1_error_steps.png)", ""]
    reporting.write_text(os.path.join(os.path.dirname(out) or ".", "reproduction.md"), lines)
    print(f"wrote {os.path.join(os.path.dirname(out) or '.', 'reproduction.md')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=("residual-speedup", "residual-scaling", "report"))
    p.add_argument("--data", default="../shared/datasets/cifar10/cifar10-train.tar.gz")
    p.add_argument("--steps", type=int, help="training steps per run (1200 speed-up, 300 scaling)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (200 speed-up, 50 scaling)")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=75)
    p.add_argument("--width", type=float, default=0.5, help="residual-speedup channel multiplier")
    p.add_argument("--learning-rate", type=float, help="initial learning rate (0.045 speed-up, 0.2 scaling)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--pairs",
        nargs="+",
        choices=("v3", "v4"),
        default=["v3", "v4"],
        help="v3: v3 vs IRv1, v4: v4 vs IRv2",
    )
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.2, 0.1])
    p.add_argument("--wide-depths", type=int, nargs=3, default=[1, 2, 2])
    p.add_argument("--probe-every", type=int, default=25)
    p.add_argument(
        "--strategy",
        choices=("one-device", "mirrored", "tpu"),
        default="one-device",
        help="multi-worker runs go through `keras-inception train --strategy multi-worker`",
    )
    p.add_argument("--output", default=OUT)
    args = p.parse_args()
    for key, value in DEFAULTS.get(args.experiment, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    {"residual-speedup": residual_speedup, "residual-scaling": residual_scaling, "report": report}[
        args.experiment
    ](args)


if __name__ == "__main__":
    main()
