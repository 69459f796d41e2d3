"""A training run's output folder: resumable, and never wrong about its best model.

Keras's ``BackupAndRestore`` + ``ModelCheckpoint`` + ``CSVLogger`` lose the best model
between phases and resumes (each new ``ModelCheckpoint`` starts from no best), back
up the averaged weights in place of the trained ones when EMA swapping runs first,
and can leave a history that disagrees with the backup. :class:`Run` keeps one state
instead, written after every epoch in this order, each file atomically:

1. ``best-<epoch>.keras``, when the monitored value improved (the parameter averages
   in it, when the optimizer keeps them), and ``state-<epoch>.weights.h5`` (model and
   optimizer, trained weights);
2. ``state.json`` (the epoch, the phase, the best so far, the whole history): the
   commit point, what a resumed run trusts;
3. ``best-<epoch>.keras`` renamed to ``best.keras``, older state files removed (a run
   killed before this finishes it when it resumes; files of an epoch killed before
   step 2 are removed);
4. ``history.csv``, ``history.json`` and ``curves.png``, written from that history.

A killed run is resumed by running it again into the same folder: ``run.json``
must hold the same settings, so two different runs are never mixed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterator

import keras
import numpy as np

from keras_inception import files, reporting

STATE = "state.json"
SETTINGS = "run.json"


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

    Raises ``ValueError`` when ``directory`` holds something else: files that are not
    a run's, or a run with other ``settings``.
    """

    def __init__(self, directory: str, settings: dict, monitor: str, mode: str = "max"):
        self.directory = directory
        self.monitor, self.mode = monitor, mode
        settings = json.loads(json.dumps(settings))  # as it will read back
        path = os.path.join(directory, SETTINGS)
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f)
            changed = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
            if changed:
                diff = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
                raise ValueError(
                    f"{directory} holds another run ({diff}): rerun it with its settings to resume it, "
                    "or choose another output folder"
                )
        elif os.path.isdir(directory) and [f for f in os.listdir(directory) if not f.startswith(".")]:
            raise ValueError(
                f"{directory} is not empty and holds no training run: choose another output folder"
            )
        else:
            files.write_bytes(path, json.dumps(settings, indent=1).encode())
        self.state = self._read_state()
        self._publish()

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

    def restore(self, model: keras.Model, phase: str) -> int:
        """Load the last state into ``model`` (built and compiled); the epoch to start at.

        The optimizer's state is loaded only when it was saved in the same ``phase``
        (fine-tuning changes the optimizer between phases).
        """
        if not self.state["weights"]:
            return 0
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        skip = [] if self.state["phase"] == phase else [model.optimizer]
        model.load_weights(self.path(self.state["weights"]), objects_to_skip=skip)
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
        if self._improved(row[self.monitor]):
            state.update(best=row[self.monitor], best_epoch=epoch, best_file=f"best-{epoch + 1:05d}.keras")
            with averaged_weights(model):
                save_model(model, self.path(state["best_file"]))
        state["weights"] = f"state-{epoch + 1:05d}.weights.h5"
        with files.atomic_path(self.path(state["weights"]), size=weights_bytes(model)) as staged:
            model.save_weights(staged)
        files.write_bytes(self.path(STATE), json.dumps(state, indent=1).encode())  # the commit point
        self.state = state
        self._publish()
        self.write_history()

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
) -> dict[str, list]:
    """``model.fit`` up to ``epochs`` within ``run``, resuming where it stopped; the history."""
    start = run.restore(model, phase) if run.epoch > initial_epoch else initial_epoch
    if start < epochs:
        model.fit(
            train_data,
            validation_data=validation_data,
            epochs=epochs,
            initial_epoch=start,
            steps_per_epoch=steps_per_epoch,
            shuffle=False,  # tf.data pipelines shuffle themselves
            callbacks=[RunCallback(run, phase), *(callbacks or [])],
            verbose=verbose,
        )
    return run.history
