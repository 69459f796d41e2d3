"""A training run's output folder: resumable, and never wrong about its best model.

Keras's ``BackupAndRestore`` + ``ModelCheckpoint`` + ``CSVLogger`` lose the best model
between phases and resumes (each new ``ModelCheckpoint`` starts from no best), back
up the averaged weights in place of the trained ones when EMA swapping runs first,
and can leave a history that disagrees with the backup. :class:`Run` keeps one state
instead, written after every epoch in this order, each file atomically:

1. ``best-<epoch>.keras``, when the monitored value improved (the parameter averages
   in it, when the optimizer keeps them), and ``state-<epoch>.weights.h5`` (model and
   optimizer, trained weights);
2. ``state.json`` (the epoch, the phase, the best so far, the random layers' generator
   states, PyTorch's global one on that backend, the whole history): the commit point,
   what a resumed run trusts;
3. ``best-<epoch>.keras`` renamed to ``best.keras``, older state files removed (a run
   killed before this finishes it when it resumes; files of an epoch killed before
   step 2 are removed);
4. ``history.csv``, ``history.json`` and ``curves.png``, written from that history.

A killed run is resumed by running it again into the same folder: ``run.json``
must hold the same settings, so two different runs are never mixed. While a run
writes its folder, it holds an OS lock on ``.run.lock`` there (released by the OS when
the process ends, however it ends): a second run into the folder is refused at once.

A run never publishes a model whose loss or weights are not finite: :func:`fit` stops
at the first non-finite loss (Keras's ``TerminateOnNaN``) or, at an epoch's end, at
non-finite weights, before the epoch is recorded, and raises :class:`DivergedError`. The
folder keeps the last good epoch; the setting of the learning rate that diverged is
the one setting a rerun may change, and the run resumes from that epoch.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator

import keras
import numpy as np

from keras_inception.core import atomic as files
from keras_inception.core import reporting

STATE = "state.json"
SETTINGS = "run.json"
LOCK = ".run.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class FolderInUseError(ValueError):
    """Another process holds the run folder's lock."""


class DivergedError(RuntimeError):
    """The loss or the weights stopped being finite; the run's folder was left as it was.

    ``setting`` names the learning rate that diverged (``"learning_rate"``,
    ``"fine_tune_learning_rate"``, ``"recipe.learning_rate"``): the one setting a rerun
    may change. ``str()`` is the whole message; :meth:`message` names the option to lower.
    """

    def __init__(self, what: str, setting: str, resume_epoch: int):
        self.what, self.setting, self.resume_epoch = what, setting, resume_epoch
        super().__init__(self.message(setting.split(".")[-1]))

    def message(self, option: str) -> str:
        resume = f"the run resumes from epoch {self.resume_epoch}"
        return f"stopped: {self.what}. Lower {option} and rerun: {resume}."


def say(verbose, message: str | None) -> None:
    """One line of what a run does, on stderr (nothing when ``verbose`` is 0 or there is no line)."""
    if verbose and message:
        print(message, file=sys.stderr, flush=True)


def describe_classes(names: list[str], shown: int = 5) -> str:
    """``"3 classes: blue, green, red"``; the first ``shown`` names of more."""
    more = ", ..." if len(names) > shown else ""
    return f"{len(names)} classes: {', '.join(names[:shown])}{more}"


def resume_line(run: Run, total: int, phase: Callable[[int], str] | None = None) -> str | None:
    """Where ``run`` continues, of ``total`` epochs (``phase(epoch)`` names the phase), or None
    for a new run."""
    adjusted = ""
    if run.adjusted:
        setting, old, new = run.adjusted
        adjusted = f" with {setting} {new:g} ({old:g} diverged)"
    if run.epoch >= total:
        return f"{run.directory} holds this run complete ({total} of {total} epochs): nothing to train"
    if run.epoch == 0:
        return f"starting again from epoch 1{adjusted}" if adjusted else None
    where = f" ({phase(run.epoch)})" if phase else ""
    return f"resuming from epoch {run.epoch + 1} of {total}{where}{adjusted}"


_held: dict[str, list] = {}  # real path of a locked folder -> [lock file, holders here, created here]


def _holder(lock) -> str:
    """``"process 1234 (keras-inception finetune ...)"``, as the holder wrote it."""
    with contextlib.suppress(OSError, ValueError):
        lock.seek(1)
        pid, _, command = lock.read().strip().partition(" ")
        if pid.isdigit():
            return f"process {pid}" + (f" ({command})" if command else "")
    return "another process"


def acquire_folder(directory: str) -> None:
    """Hold the OS lock of run folder ``directory`` (created if missing); re-entrant in one process.

    Raises :class:`FolderInUseError`, naming the holder, when another process holds it, and
    ``ValueError`` when ``directory`` holds files but no run (it is then left untouched).
    """
    key = os.path.realpath(directory)
    if key in _held:
        _held[key][1] += 1
        return
    unknown = os.path.isdir(directory) and [f for f in os.listdir(directory) if not f.startswith(".")]
    if unknown and not os.path.exists(os.path.join(directory, SETTINGS)):
        raise ValueError(f"{directory} is not empty and holds no training run: choose another output folder")
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    lock = open(os.path.join(directory, LOCK), "a+")  # noqa: SIM115 (open while the lock is held)
    try:
        if fcntl:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            lock.seek(0)
            msvcrt.locking(lock.fileno(), msvcrt.LK_NBLCK, 1)
    except OSError:
        holder = _holder(lock)
        lock.close()
        raise FolderInUseError(
            f"run folder {directory} is in use by {holder}; "
            "wait for it to end or choose another output folder"
        ) from None
    command = " ".join([os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]])
    lock.seek(1)
    lock.truncate()
    lock.write(f"{os.getpid()} {command}\n")  # byte 0 is the one Windows locks
    lock.flush()
    _held[key] = [lock, 1, created]


def release_folder(directory: str) -> None:
    """Undo one :func:`acquire_folder`; the last one releases the OS lock, and removes the
    folder if it made it and nothing was written there (a run refused before it began)."""
    key = os.path.realpath(directory)
    entry = _held.get(key)
    if not entry:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        unused = entry[2] and os.listdir(key) == [LOCK]
        if unused:
            os.remove(os.path.join(key, LOCK))  # still held: no other run can have taken it
        entry[0].close()  # closing releases the lock (and so does the process ending)
        if unused:
            with contextlib.suppress(OSError):
                os.rmdir(key)


@contextlib.contextmanager
def locked_folder(directory: str) -> Iterator[None]:
    """Within: this process holds run folder ``directory`` (see :func:`acquire_folder`)."""
    acquire_folder(directory)
    try:
        yield
    finally:
        release_folder(directory)


def finished_epochs(directory: str) -> int:
    """Epochs the run in ``directory`` has recorded (0 when none)."""
    with contextlib.suppress(OSError, ValueError, KeyError), open(os.path.join(directory, STATE)) as f:
        return int(json.load(f)["epoch"])
    return 0


def _changes(recorded: dict, settings: dict, prefix: str = "") -> dict[str, tuple]:
    """``{"key" or "key.sub": (recorded, now)}`` for the settings that differ."""
    changed = {}
    for key, value in settings.items():
        old = recorded.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            changed.update(_changes(old, value, f"{prefix}{key}."))
        elif old != value:
            changed[prefix + key] = (old, value)
    return changed


def swap_averages(model: keras.Model) -> None:
    """Exchange ``model``'s weights with its optimizer's parameter averages (if it keeps any)."""
    optimizer = getattr(model, "optimizer", None)
    pairs = zip(getattr(optimizer, "averaged_variables", []), getattr(optimizer, "averages", []), strict=True)
    for variable, average in pairs:
        value = keras.ops.copy(variable.value)
        variable.assign(average.value)
        average.assign(value)


@contextlib.contextmanager
def averaged_weights(model: keras.Model) -> Iterator[None]:
    """Within: ``model`` holds its optimizer's parameter averages (if it keeps any)."""
    swap_averages(model)
    try:
        yield
    finally:
        swap_averages(model)


def seed_states(model: keras.Model) -> list:
    """The state variables of ``model``'s random layers' ``keras.random.SeedGenerator`` s (Dropout's,
    ...), in model order: not in ``.weights.h5``, so a run keeps them in its state."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def torch_generator_state() -> str | None:
    """PyTorch's global generator state (base64), on the PyTorch backend: there, Keras's random
    layers without a seed (``Dropout()``) draw from it, not from their ``SeedGenerator``."""
    if keras.backend.backend() != "torch":
        return None
    import torch

    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()


def set_torch_generator_state(state: str) -> None:
    import torch

    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state), np.uint8).copy()))


def weights_bytes(model: keras.Model) -> int:
    """The bytes of ``model``'s weights: the space a save is checked for (a full disk mid-write
    can crash h5py at exit, so it is refused before)."""
    return sum(math.prod(w.shape) * np.dtype(w.dtype).itemsize for w in model.weights)


def save_model(model: keras.Model, path: str) -> str:
    """``model``'s layers and weights as a ``.keras`` file, atomically, without its training
    state (optimizer and its averages live in the run's state): it loads without warnings."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    with files.atomic_path(path, size=weights_bytes(model)) as staged:
        copy.save(staged)
    return path


class Run:
    """The output folder of one training run (see the module docstring).

    Holds the folder's lock until :meth:`close` (or the end of a ``with`` block, or of
    the process). Raises :class:`FolderInUseError` when another process holds it, and
    ``ValueError`` when ``directory`` holds something else: files that are not a run's,
    or a run with other ``settings`` (after a divergence, its learning rate may differ:
    ``adjusted`` then says how).
    """

    def __init__(self, directory: str, settings: dict, monitor: str, mode: str = "max"):
        self.directory = directory
        self.monitor, self.mode = monitor, mode
        self.adjusted: tuple[str, object, object] | None = None  # (setting, old, new) after a divergence
        acquire_folder(directory)
        self._locked = True
        try:
            self._open(json.loads(json.dumps(settings)), os.path.join(directory, SETTINGS))
        except BaseException:
            self.close()
            raise

    def _open(self, settings: dict, path: str) -> None:
        self.state = self._read_state()
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f)
            changed = _changes(recorded, settings)
            diverged = (self.state.get("diverged") or {}).get("setting")
            if changed and list(changed) == [diverged]:
                self.adjusted = (diverged, *changed[diverged])
                files.write_bytes(path, json.dumps(settings, indent=1).encode())
            elif changed:
                diff = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
                raise ValueError(
                    f"{self.directory} holds another run ({diff}): rerun it with its settings to resume it, "
                    "or choose another output folder"
                )
        else:
            files.write_bytes(path, json.dumps(settings, indent=1).encode())
        self._publish()

    def close(self) -> None:
        """Release the folder's lock (the process ending releases it too)."""
        if getattr(self, "_locked", False):
            self._locked = False
            release_folder(self.directory)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ paths and state

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _read_state(self) -> dict:
        if not os.path.exists(self.path(STATE)):
            return {
                "epoch": 0,
                "phase": None,
                "weights": None,
                "best": None,
                "best_epoch": None,
                "best_file": None,
                "history": [],
            }
        with open(self.path(STATE)) as f:
            return json.load(f)

    @property
    def epoch(self) -> int:
        """Epochs finished so far."""
        return self.state["epoch"]

    @property
    def history(self) -> dict[str, list]:
        """``{metric: [value per epoch]}`` of every finished epoch."""
        keys = [k for row in self.state["history"] for k in row if k != "epoch"]
        return {k: [row.get(k, math.nan) for row in self.state["history"]] for k in dict.fromkeys(keys)}

    @property
    def best(self) -> tuple[int | None, float | None]:
        """``(epoch, value)`` of the best monitored epoch so far."""
        return self.state["best_epoch"], self.state["best"]

    def restore(self, model: keras.Model, phase: str, verbose: int | str = "auto") -> int:
        """Load the last state into ``model`` (built and compiled); the epoch to start at.

        The optimizer's state is loaded only when it was saved in the same ``phase``
        (fine-tuning changes the optimizer between phases). Random layers whose generator
        states the folder does not hold (a folder of an older version) draw afresh, and a
        line says so.
        """
        if not self.state["weights"]:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        skip = [] if self.state["phase"] == phase else [model.optimizer]
        rate = model.optimizer.learning_rate
        rate = float(rate.numpy()) if isinstance(rate, keras.Variable) else None
        model.load_weights(self.path(self.state["weights"]), objects_to_skip=skip)
        saved = self.state.get("seeds") or []
        generators = seed_states(model)
        if len(saved) == len(generators):  # the random layers draw on from where they were
            for variable, value in zip(generators, saved, strict=True):
                variable.assign(np.asarray(value, variable.dtype))
        else:
            say(
                verbose,
                f"the run's state holds {len(saved)} random generator states, the model has "
                f"{len(generators)}: its random layers (Dropout) draw afresh from epoch {self.epoch + 1}",
            )
        if rate is not None:  # this run's rate, not the saved one (it differs after a divergence)
            model.optimizer.learning_rate = rate
        return self.epoch

    def _improved(self, value: float) -> bool:
        best = self.state["best"]
        if value is None or not math.isfinite(value):
            return False
        return best is None or (value > best if self.mode == "max" else value < best)

    def end_epoch(self, model: keras.Model, epoch: int, logs: dict, phase: str) -> None:
        """Record a finished epoch: best model, then state, then the history files."""
        if self.monitor not in logs:
            raise ValueError(f"cannot keep the best model: no {self.monitor!r} in {sorted(logs)}")
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        state = dict(self.state, history=[*self.state["history"], row], epoch=epoch + 1, phase=phase)
        state.pop("diverged", None)
        if self._improved(row[self.monitor]):
            state.update(best=row[self.monitor], best_epoch=epoch, best_file=f"best-{epoch + 1:05d}.keras")
            with averaged_weights(model):
                save_model(model, self.path(state["best_file"]))
        state["weights"] = f"state-{epoch + 1:05d}.weights.h5"
        state["seeds"] = [np.asarray(v.value).tolist() for v in seed_states(model)]
        state["torch_generator"] = torch_generator_state()
        with files.atomic_path(self.path(state["weights"]), size=weights_bytes(model)) as staged:
            model.save_weights(staged)
        files.write_bytes(self.path(STATE), json.dumps(state, indent=1).encode())  # the commit point
        self.state = state
        self._publish()
        self.write_history()

    def record_divergence(self, setting: str) -> None:
        """Note in the state that learning rate ``setting`` diverged after the last finished epoch:
        a rerun may change that setting (and only it) and resume from there."""
        self.state = dict(self.state, diverged={"after_epoch": self.epoch, "setting": setting})
        files.write_bytes(self.path(STATE), json.dumps(self.state, indent=1).encode())

    def _publish(self) -> None:
        """Rename the committed best model to ``best.keras``; remove what no state refers to."""
        best = self.state.get("best_file")
        if best and os.path.exists(self.path(best)):
            os.replace(self.path(best), self.path("best.keras"))
        for name in os.listdir(self.directory):
            stale_state = name.startswith("state-") and name != self.state["weights"]
            if stale_state or (name.startswith("best-") and name.endswith(".keras")):
                os.remove(self.path(name))

    def write_history(self) -> None:
        """``history.csv``, ``history.json`` and ``curves.png`` from the recorded history."""
        rows = self.state["history"]
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        files.write_bytes(self.path("history.csv"), buffer.getvalue().encode())
        summary = {
            "best_epoch": self.state["best_epoch"],
            "best": self.state["best"],
            "monitor": self.monitor,
        }
        reporting.write_text(
            self.path("history.json"), [json.dumps({**summary, "history": self.history}, indent=1)]
        )
        history = self.history

        def series(key: str) -> dict:
            return {
                k: (range(1, len(history[k]) + 1), history[k]) for k in (key, f"val_{key}") if k in history
            }

        keys = ("loss", self.monitor.removeprefix("val_"))
        reporting.plot(
            self.path("curves.png"), [reporting.Panel(key, "epoch", key, series(key)) for key in keys]
        )


class RunCallback(keras.callbacks.Callback):
    """Evaluates with the parameter averages and hands each finished epoch to :class:`Run`."""

    def __init__(self, run: Run, phase: str):
        super().__init__()
        self.run, self.phase = run, phase

    def on_test_begin(self, logs=None):
        swap_averages(self.model)

    def on_test_end(self, logs=None):
        swap_averages(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self.run.end_epoch(self.model, epoch, logs or {}, self.phase)


class TorchGenerator(keras.callbacks.Callback):
    """Puts PyTorch's global generator back to a saved state just before a resumed run's first
    batch: after what ``fit`` draws from it as it starts (the data loader's seed), as the
    interrupted run had drawn that before its first epoch."""

    def __init__(self, state: str):
        super().__init__()
        self.state = state

    def on_train_batch_begin(self, batch, logs=None):
        if self.state is not None:
            set_torch_generator_state(self.state)
            self.state = None


class NonFiniteGuard(keras.callbacks.TerminateOnNaN):
    """Stops a run at the first non-finite loss (after each batch, as ``TerminateOnNaN``) or
    non-finite weights or averages (at each epoch's end, before :class:`RunCallback` records
    it): notes the divergence in the run's state and raises :class:`DivergedError`."""

    def __init__(self, run: Run, epochs: int, setting: str, label: str | None = None):
        super().__init__(raise_error=True)
        self.run, self.epochs, self.setting, self.label = run, epochs, setting, label
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, logs)
        except RuntimeError:
            self._stop(f"loss became {float(logs['loss'])}")

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.model.optimizer
        variables = [*self.model.weights, *getattr(optimizer, "averages", [])]
        bad = [
            v.path
            for v in variables
            if "float" in str(v.dtype) and not bool(keras.ops.all(keras.ops.isfinite(v.value)))
        ]
        if bad:
            self._stop(f"weights became nan or inf ({bad[0]}{', ...' if len(bad) > 1 else ''})")
        for key, value in (logs or {}).items():
            if key.endswith("loss") and not math.isfinite(float(value)):
                self._stop(f"{key} became {float(value)}")

    def _stop(self, what: str) -> None:
        rate = f"{float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)):g}"
        where = ", ".join([*([self.label] if self.label else []), f"learning rate {rate}"])
        best_epoch, best = self.run.best
        kept = (
            f"best.keras is unchanged (epoch {best_epoch + 1}, {self.run.monitor} {best:.4g})"
            if best is not None
            else "no best.keras was written"
        )
        self.run.record_divergence(self.setting)
        what = f"{what} in epoch {self.epoch + 1} of {self.epochs} ({where}); {kept}"
        raise DivergedError(what, self.setting, self.run.epoch + 1)


def fit(
    model: keras.Model,
    run: Run,
    train_data,
    validation_data,
    epochs: int,
    *,
    phase: str = "train",
    initial_epoch: int = 0,
    steps_per_epoch: int | None = None,
    callbacks: list | None = None,
    verbose: int | str = "auto",
    label: str | None = None,
    rate_setting: str = "learning_rate",
) -> dict[str, list]:
    """``model.fit`` up to ``epochs`` within ``run``, resuming where it stopped; the history.

    ``train_data`` is a dataset, or a function of the batch to start at that returns the
    stream from there (:func:`keras_inception.data.pipeline`'s ``start_batch``, with
    ``steps_per_epoch`` given), so that a resumed run sees the batches the interrupted one would have.

    Raises :class:`DivergedError` at the first non-finite loss or weights (see
    :class:`NonFiniteGuard`); ``label`` (e.g. ``"phase 2"``) and ``rate_setting`` (the
    setting of this learning rate) are for its message.
    """
    resumed = run.epoch > initial_epoch
    start = run.restore(model, phase, verbose) if resumed else initial_epoch
    if start < epochs:
        generator = run.state.get("torch_generator") if resumed else None
        if generator and keras.backend.backend() == "torch":
            callbacks = [TorchGenerator(generator), *(callbacks or [])]
        if callable(train_data):
            if steps_per_epoch is None:
                raise ValueError("a function for train_data needs steps_per_epoch")
            train_data = train_data(start * steps_per_epoch)
        guard = NonFiniteGuard(run, epochs, rate_setting, label)
        model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            initial_epoch=start,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # tf.data pipelines shuffle themselves
            callbacks=[guard, RunCallback(run, phase), *(callbacks or [])],
            verbose=verbose,
        )
    return run.history
