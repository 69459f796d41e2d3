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
from keras_inception.core import atomic as files  # noqa: E402
from keras_inception.core import registry, reporting  # noqa: E402
from keras_inception.input import pipelines as data  # noqa: E402
from keras_inception.models import get, multiply_adds  # noqa: E402
from keras_inception.train import training  # noqa: E402

OUT = "docs/reproduction"
PAIRS = {  # (non-residual, residual), depths chosen so multiply-adds match within 2% at width 0.5, 75x75
    "v3 vs IRv1": (("inception_v3", (2, 2, 1)), ("inception_resnet_v1", (1, 2, 1))),
    "v4 vs IRv2": (("inception_v4", (1, 2, 1)), ("inception_resnet_v2", (2, 7, 2))),
}
MATCH_TOLERANCE = 0.02  # relative multiply-add difference allowed within a pair


class ResidualDeathMonitor(keras.callbacks.Callback):
    """Detects the paper's "dying" residual networks (section 3.3).

    Every ``every`` batches, the features entering the final average pool are
    computed for ``probe`` images twice: with the probe batch's own BatchNorm
    statistics, as a training step sees them (``batch_trace``), and with the moving
    statistics of inference (``trace``); the moving statistics are left as they were.
    The network has died when at least ``zero_fraction`` of the training-step features
    are exactly zero, or when the loss is not finite or above ``max_loss``. Zeros seen
    only with the moving statistics are lagging statistics, not dead units.
    ``events`` records ``(step, reason, zero fraction, loss)``; ``stop`` ends training.
    """

    def __init__(self, probe, every: int = 25, zero_fraction: float = 0.99, max_loss: float = 1e3, stop=True):
        super().__init__()
        self.probe, self.every, self.threshold, self.max_loss, self.stop = (
            probe,
            every,
            zero_fraction,
            max_loss,
            stop,
        )
        self.events: list[tuple[int, str, float, float]] = []
        self.trace: list[tuple[int, float]] = []
        self.batch_trace: list[tuple[int, float]] = []
        self._features = None
        self._step = 0

    def on_train_begin(self, logs=None):
        pool = self.model.get_layer("global_pool")
        self._features = keras.Model(self.model.inputs, pool.input)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        loss = float((logs or {}).get("loss", 0.0))
        dead_loss = not np.isfinite(loss) or loss > self.max_loss
        if self._step % self.every and not dead_loss:
            return
        moving = np.asarray(self._features(self.probe, training=False))
        self.trace.append((self._step, float(np.mean(moving == 0.0))))
        state = [v.numpy() for v in self._features.non_trainable_variables]
        features = np.asarray(self._features(self.probe, training=True))
        for variable, value in zip(self._features.non_trainable_variables, state, strict=True):
            variable.assign(value)
        zeros = float(np.mean(features == 0.0))
        self.batch_trace.append((self._step, zeros))
        reason = (
            "loss diverged"
            if dead_loss
            else "pre-pool features all zero"
            if zeros >= self.threshold
            else None
        )
        if reason:
            self.events.append((self._step, reason, zeros, loss))
            if self.stop:
                self.model.stop_training = True

    @property
    def died_at(self) -> int | None:
        return self.events[0][0] if self.events else None

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
    """Package version, commit (``-dirty`` with uncommitted changes) and machine of this process.

    Read once, when the process starts (:data:`PROVENANCE`): the commit is that of the code
    the process loaded, even if the checkout moves while it runs.
    """

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", os.path.dirname(os.path.abspath(__file__)), *argv],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
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
    }


PROVENANCE = provenance()


def run(args, name: str, seed: int, extra: dict, callbacks=()) -> dict:
    """Train one configuration for ``--steps``; evaluate every ``--eval-every`` steps."""
    started = {**PROVENANCE, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
            monitor = ResidualDeathMonitor(probe, every=args.probe_every, stop=True)
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
    names = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    runs = []
    for name in names:
        with open(os.path.join(folder, name)) as f:
            runs.append(json.load(f))
    return runs


def _spread(values: list[float], digits: int = 1) -> str:
    """``mean (min-max)`` over seeds; the value alone for one run."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _common(runs: list[dict], key: str):
    """The one value of ``key`` shared by ``runs``; the report refuses mixed settings."""
    values = {json.dumps(r.get(key), sort_keys=True) for r in runs}
    if len(values) != 1:
        raise ValueError(f"the runs differ in {key}: {sorted(values)}; report them separately")
    return runs[0].get(key)


def _provenance(runs: list[dict]) -> str:
    commits = sorted({r.get("commit", "unrecorded") for r in runs})
    machines = sorted({json.dumps(r.get("machine", {}), sort_keys=True) for r in runs})
    m = json.loads(machines[0])
    where = (
        f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, TensorFlow {m.get('tensorflow', '?')}, "
        f"Keras {m.get('keras', '?')}"
        if len(machines) == 1
        else f"{len(machines)} different machines (see the records)"
    )
    loads = [v for r in runs for v in r.get("load_average", [])]
    load = ""
    if loads:
        load = f"; one-minute load average during the runs {min(loads):.1f}-{max(loads):.1f}"
        if max(loads) > m.get("cores", 0) + 0.5:
            load += " (other jobs shared the machine at times, so the times are indicative only)"
    return f"Measured on {where}, at commit {', '.join(f'`{c[:12]}`' for c in commits)}{load}."


def _recipe(r: dict) -> str:
    rec = r["recipe"]
    decay = "none" if not rec["weight_decay"] else f"{rec['weight_decay']:g} ({rec['weight_decay_mode']})"
    averaging = "no weight averaging" if rec["ema_decay"] is None else f"weight averaging {rec['ema_decay']}"
    return (
        f"RMSProp (rho {rec['rho']}, momentum {rec['momentum']}, epsilon {rec['epsilon']}), "
        f"learning rate {rec['learning_rate']} x{rec['decay_rate']} every {rec['decay_epochs']:g} epochs, "
        f"weight decay {decay}, label smoothing {rec['label_smoothing']}, {averaging}, "
        f"BatchNorm momentum {r['bn_momentum']}, {r['augmentation']} augmentation"
    )


def _setting(r: dict) -> str:
    classes = f", {r['classes']} classes" if "classes" in r else ""
    return (
        f"`{os.path.basename(r['args']['data'])}`: {r['train_examples']:,} training images{classes}; "
        f"{r['image_size']}x{r['image_size']}, batch {r['batch_size']}, {r['args']['steps']} steps; "
        f"top-1 error on {r['eval_images']:,} held-out images every {r['args']['eval_every']} steps"
    )


def _speedup_verdict(pair: str, a: list[dict], b: list[dict]) -> str:
    """What the runs show for one pair, only as far as the seeds agree."""
    plain, residual = a[0]["model"], b[0]["model"]
    n = min(len(r["top1_error"]) for r in a + b)
    steps = a[0]["steps"][:n]
    lower = [
        i
        for i in range(n)
        if np.mean([r["top1_error"][i] for r in b]) < np.mean([r["top1_error"][i] for r in a])
    ]
    apart = [
        steps[i] for i in range(n) if max(r["top1_error"][i] for r in b) < min(r["top1_error"][i] for r in a)
    ]
    end_a, end_b = [r["top1_error"][n - 1] for r in a], [r["top1_error"][n - 1] for r in b]
    if max(end_b) < min(end_a):
        verdict = (
            "agrees with the paper in direction at this scale (each residual seed ends below each plain one)"
        )
    elif np.mean(end_b) < np.mean(end_a):
        verdict = "leans towards the paper, but the seeds' final errors overlap"
    else:
        verdict = "does not agree with the paper at this scale"
    return (
        f"{pair}: {residual} has the lower mean top-1 error at {len(lower)} of {n} evaluations; "
        f"all its seeds are below all of {plain}'s at steps {', '.join(map(str, apart)) or 'none'}. "
        f"Final error {_spread(end_b)}% against {_spread(end_a)}% ({len(b)} and {len(a)} seeds): "
        f"this {verdict}."
    )


def _plot(runs: list[dict], x: str, y: str, path: str, title: str, label=None) -> None:
    label = label or (lambda r: f"{r['model']} seed {r['seed']}")
    xlabel = {"steps": "training step", "wall_s": "training wall time (s)"}[x]
    series = {label(r): (r[x][: len(r[y])], r[y]) for r in runs}
    reporting.plot(
        path, [reporting.Panel(title, xlabel, y.replace("_", " ") + " (%)", series)], panel_width=6
    )


def _speedup_section(out: str, speed: list[dict]) -> list[str]:
    r0 = speed[0]
    for key in ("recipe", "bn_momentum", "augmentation", "image_size", "batch_size", "eval_images", "width"):
        _common(speed, key)
    lines = [
        "## Residual connections and training speed (paper Figs. 21-26)",
        "",
        f"{_setting(r0)}. Width multiplier {r0['width']}. {_recipe(r0)}. Seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in speed})))}. {_provenance(speed)}",
        "",
        "Each pair's multiply-adds are matched by the blocks per grid (depths); the difference is the "
        "residual network's count against the plain one's. Cells with several seeds read mean (min-max). "
        "Top-5 error is not reported: with this few classes and a saturated softmax it says little.",
        "",
    ]
    header = [
        "pair", "model", "depths", "multiply-adds (M)", "difference", "parameters", "seeds",
        "final top-1 error %", "best top-1 error %", "training wall time (s)", "training CPU time (s)",
    ]  # fmt: skip
    rows, verdicts, plots = [], [], []
    for pair, ((plain, _), (residual, _)) in PAIRS.items():
        arms = [[r for r in speed if r["model"] == name] for name in (plain, residual)]
        if not all(arms):
            continue
        for runs in arms:
            first = runs[0]
            rows.append([
                pair, first["model"], tuple(first["depths"]), f"{first['multiply_adds'] / 1e6:.1f}",
                f"{100 * first['pair_mismatch']:+.2f}%" if first["model"] == residual else "-",
                f"{first['parameters']:,}", len(runs), _spread([r["top1_error"][-1] for r in runs]),
                _spread([min(r["top1_error"]) for r in runs]), _spread([r["wall_s"][-1] for r in runs], 0),
                _spread([r["cpu_s"][-1] for r in runs], 0),
            ])  # fmt: skip
        verdicts.append(_speedup_verdict(pair, *arms))
        slug = pair.replace(" ", "_")
        for x in ("steps", "wall_s"):
            _plot(arms[0] + arms[1], x, "top1_error", os.path.join(out, f"{slug}_top1_error_{x}.png"), pair)
        base = os.path.basename(out)
        plots.append(
            f"![{slug}]({base}/{slug}_top1_error_steps.png) "
            f"![{slug} vs time]({base}/{slug}_top1_error_wall_s.png)"
        )
    lines += reporting.table(header, rows)
    lines += ["", "What the runs show against the paper (residual versions train faster):", ""]
    lines += [f"- {v}" for v in verdicts]
    lines += [
        "",
        f"These are short runs ({r0['args']['steps']} steps of batch {r0['batch_size']}, "
        f"{'under one pass' if r0['args']['steps'] * r0['batch_size'] < r0['train_examples'] else 'passes'} "
        f"over the {r0['train_examples']:,} training images): they measure early training speed, "
        "not the final "
        "accuracy, which the paper finds nearly equal.",
        "",
        *[p + "\n" for p in plots],
    ]
    return lines


def _max_trace(r: dict, key: str) -> float:
    return max((z for _, z in r.get(key, [])), default=float("nan"))


def _scaling_section(out: str, scaling: list[dict]) -> list[str]:
    r0 = scaling[0]
    for key in ("recipe", "depths", "image_size", "batch_size", "width", "classes"):
        _common(scaling, key)
    chance = 100.0 * (1 - 1 / r0["classes"])
    scales = sorted({r["scale"] for r in scaling}, reverse=True)
    lines = [
        "## Residual scaling and very wide residual networks (paper section 3.3)",
        "",
        f"Inception-ResNet-v2 at width {r0['width']} (slim's residual block widths at width 1), "
        f"depths {tuple(r0['depths'])}. {_setting(r0)}. {_recipe(r0)}. {_provenance(scaling)}",
        "",
        "The residual scale applies to every block of `Repeat`, `Repeat_1` and `Repeat_2`; the final "
        "`Block8` (linear, no ReLU) keeps scale 1.0 in every variant, as slim builds it. Every "
        f"{r0['args']['probe_every']} steps a fixed probe batch's pre-pool features are checked for "
        "zeros twice: with the batch's own BatchNorm statistics, as a training step sees them (all zero is "
        'the paper\'s "death"), and with the moving statistics of inference; the loss is checked for '
        "divergence. "
        f"Chance level is {chance:.1f}% top-1 error. Cells read mean (min-max) over seeds.",
        "",
    ]
    header = [
        "residual scale", "seeds", "died", "final top-1 error %", "seeds below chance", "final loss",
        "max zero fraction, moving statistics", "max zero fraction, batch statistics",
    ]  # fmt: skip
    rows, summary = [], {}
    for scale in scales:
        runs = [r for r in scaling if r["scale"] == scale]
        died = [r for r in runs if r["died_at"]]
        final = [r["top1_error"][-1] for r in runs if r["top1_error"]]
        moving = [_max_trace(r, "zero_trace") for r in runs]
        batch = [_max_trace(r, "batch_stat_zero_trace") for r in runs]
        below = sum(e < chance for e in final)
        summary[scale] = (runs, died, final, moving, batch, below)
        rows.append([
            scale, len(runs),
            ", ".join(f"seed {r['seed']}: step {r['died_at']}, {r['events'][0][1]}" for r in died) or "none",
            _spread(final), f"{below} of {len(final)}", _spread([r["loss"][-1] for r in runs], 3),
            _spread(moving, 3), _spread(batch, 3),
        ])  # fmt: skip
    lines += reporting.table(header, rows)
    lines += ["", "What the runs show:", ""]
    steps = max(r["steps"][-1] for r in scaling if r["steps"])
    if not any(s[1] for s in summary.values()):
        lines.append(
            f"- No variant died on any seed within {steps} steps: the paper's effect does not appear here."
        )
    else:
        for scale, (runs, died, *_rest) in summary.items():
            lines.append(f"- Scale {scale}: {len(died)} of {len(runs)} seeds died.")
        deaths = {scale: len(s[1]) for scale, s in summary.items()}
        unscaled, scaled = deaths.get(1.0), [n for scale, n in deaths.items() if scale != 1.0]
        if len(set(deaths.values())) == 1:
            lines.append("- Deaths do not differ between the scales: the paper's effect does not appear.")
        elif unscaled is not None and scaled and all(unscaled > n for n in scaled):
            lines.append("- More unscaled seeds died than scaled ones: the direction of the paper's effect.")
        else:
            lines.append("- The deaths do not follow the scale in the paper's direction.")
    ranked = sorted(summary, key=lambda s: np.mean(summary[s][2]))
    best, rest = ranked[0], ranked[1:]
    separated = all(max(summary[best][2]) < min(summary[s][2]) for s in rest)
    lines.append(
        f"- Lowest mean final error: scale {best} ({_spread(summary[best][2])}%); "
        + (
            "every one of its seeds ends below every seed of the other scales."
            if separated
            else "the seeds' ranges overlap with another scale's, so the runs do not order the scales."
        )
    )
    for scale, (_, _, final, _, _, below) in summary.items():
        if below < len(final):
            lines.append(
                f"- Scale {scale}: {len(final) - below} of {len(final)} seeds end at or above chance "
                f"({chance:.1f}%): those runs did not learn in {steps} steps."
            )
    moving = [m for s in summary.values() for m in s[3]]
    batch = [b for s in summary.values() for b in s[4]]
    if moving and batch:
        lag = np.mean(batch) < np.mean(moving) - 0.1
        lines.append(
            f"- Pre-pool zero fraction: up to {_spread(moving, 3)} with the moving statistics against "
            f"{_spread(batch, 3)} with the batch's own (all runs): "
            + (
                "the zeros come mostly from BatchNorm's moving statistics lagging the weights, "
                "not from dead units."
                if lag
                else "the zeros remain with batch statistics: lagging moving statistics do not explain them."
            )
        )
    _plot(
        scaling, "steps", "top1_error", os.path.join(out, "scaling_top1_error_steps.png"),
        "wide IRv2: top-1 error by residual scale", lambda r: f"scale {r['scale']} seed {r['seed']}",
    )  # fmt: skip
    lines += ["", f"![scaling]({os.path.basename(out)}/scaling_top1_error_steps.png)", ""]
    return lines


def report(args) -> None:
    """docs/reproduction.md from the records alone: every figure in it is read or computed from them."""
    out = args.output
    lines = [
        "# Reproducing the paper's findings at small scale",
        "",
        f"Generated by `tools/reproduce.py report` from the run records in `{os.path.basename(out)}/`; "
        "each record holds its arguments, recipe, package version, commit, seed and machine. "
        "The commands are in `docs/training.md`.",
        "",
    ]
    speed = _load(out, "residual-speedup")
    if speed:
        lines += _speedup_section(out, speed)
    scaling = _load(out, "residual-scaling")
    if scaling:
        lines += _scaling_section(out, scaling)
    target = os.path.join(os.path.dirname(out) or ".", "reproduction.md")
    reporting.write_text(target, lines)
    print(f"wrote {target}")


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
