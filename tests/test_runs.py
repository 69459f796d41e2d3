"""Training you can trust: the best model is kept across phases and resumes, a killed run
resumes to the same weights, averages follow slim's warm-up, outputs are never mixed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_inception as ki
from keras_inception.input import pipelines as data
from keras_inception.nn.layers import Builder, ClassifierOutput
from keras_inception.train import runs, training

HERE = os.path.dirname(__file__)


def tiny(classes: int = 3) -> keras.Model:
    """slim's conv unit, a residual scale-sum and a classifier: the run mechanics, quickly."""
    keras.utils.set_random_seed(0)
    b = Builder()
    inputs = keras.Input((32, 32, 3))
    x = b.conv(inputs, 8, 3, "Conv2d_1a_3x3", strides=2)
    x = ki.ScaleSum(0.2)([x, b.conv(x, 8, 3, "Conv2d_2a_3x3")])
    x = keras.layers.Dense(classes, name="Logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, ClassifierOutput("softmax", name="Predictions")(x), name="tiny")


def fixed_batches(n: int = 16, classes: int = 3) -> tf.data.Dataset:
    """Two batches of 8, the same every epoch (so a resumed run sees what an uninterrupted one does)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 32, 32, 3)).astype("float32")
    y = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


class Crash(keras.callbacks.Callback):
    """Ends the process's training abruptly after ``epoch`` (the run's state is written first)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def assert_same_weights(a: str, b: str) -> None:
    """The two saved models hold the same weights (BatchNorm statistics included) to float tolerance."""
    pairs = list(zip(keras.saving.load_model(a).weights, keras.saving.load_model(b).weights, strict=True))
    worst = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)
    print(f"largest difference between the resumed and the uninterrupted run: {worst:.2e}")
    for x, y in pairs:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_resumed_run_with_averages_equals_an_uninterrupted_one(tmp_path):
    recipe = training.Recipe.slim(learning_rate=0.01)
    whole = str(tmp_path / "whole")
    training.train(tiny, fixed_batches(), fixed_batches(), whole, 4, 2, recipe, verbose=0)
    cut = str(tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        training.train(
            tiny, fixed_batches(), fixed_batches(), cut, 4, 2, recipe, extra_callbacks=[Crash(1)], verbose=0
        )
    with open(os.path.join(cut, "history.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]
    model = training.train(tiny, fixed_batches(), fixed_batches(), cut, 4, 2, recipe, verbose=0)
    assert int(model.optimizer.iterations) == 4 * 2  # the optimizer state came back, averages with it
    assert_same_weights(os.path.join(whole, "final.keras"), os.path.join(cut, "final.keras"))
    with open(os.path.join(cut, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]  # each epoch once
    with open(os.path.join(cut, "history.json")) as f:
        history = json.load(f)
    assert history["history"]["val_top1"] == [float(row["val_top1"]) for row in rows]  # the files agree
    assert os.path.exists(os.path.join(cut, "curves.png"))
    best = keras.saving.load_model(os.path.join(cut, "best.keras"))
    evaluated = best.evaluate(fixed_batches(), verbose=0, return_dict=True)["top1"]
    assert evaluated == pytest.approx(history["best"])  # best.keras is the model of the best epoch


def test_best_model_survives_a_worse_later_phase(tmp_path):
    """Phase 1 reaches 0.6, phase 2 (another run object, as after a resume) only 0.2."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    run = runs.Run(str(tmp_path), {"job": 1}, "val_top1")
    model.layers[0].kernel.assign(np.ones((2, 1)))
    run.end_epoch(model, 0, {"loss": 1.0, "val_top1": 0.6}, "head")
    model.compile("adam", "mse")
    resumed = runs.Run(str(tmp_path), {"job": 1}, "val_top1")
    model.layers[0].kernel.assign(np.full((2, 1), 7.0))
    resumed.end_epoch(model, 1, {"loss": 2.0, "val_top1": 0.2}, "fine-tune")
    best = keras.saving.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(best.layers[0].kernel.numpy(), np.ones((2, 1)))
    assert resumed.best == (0, 0.6)
    assert resumed.history["val_top1"] == [0.6, 0.2]


def test_output_folders_are_never_mixed(tmp_path):
    runs.Run(str(tmp_path / "a"), {"model": "inception_v4", "learning_rate": 0.1}, "val_top1")
    with pytest.raises(ValueError, match="holds another run \\(learning_rate: 0.1 there, 0.2 now\\)"):
        runs.Run(str(tmp_path / "a"), {"model": "inception_v4", "learning_rate": 0.2}, "val_top1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no training run"):
        runs.Run(str(tmp_path / "b"), {"model": "inception_v4"}, "val_top1")


def test_averages_follow_slims_warm_up_and_rmsprop_starts_at_one():
    variable = keras.Variable(np.array([1.0, -2.0], "float32"))
    optimizer = training.SlimRMSprop(learning_rate=0.1, ema_decay=0.9999)
    optimizer.build([variable])
    optimizer.track_averages([variable])
    w, ms, mom, avg = np.array([1.0, -2.0]), np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for t, grad in enumerate([np.array([0.5, -1.0]), np.array([2.0, 0.1]), np.array([-1.0, 1.0])], start=1):
        optimizer.apply([tf.constant(grad, tf.float32)], [variable])
        ms = 0.9 * ms + 0.1 * grad**2  # TF1 RMSPropOptimizer, ms starting at 1.0
        mom = 0.9 * mom + 0.1 * grad / np.sqrt(ms + 1.0)
        w = w - mom
        decay = min(0.9999, (1 + t) / (10 + t))  # ExponentialMovingAverage(num_updates=global_step)
        avg = avg - (1 - decay) * (avg - w)
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-6)
        np.testing.assert_allclose(optimizer.averages[0].numpy(), avg, rtol=1e-6)


KILLED_RUN = """
import sys
import numpy as np
sys.path.insert(0, {here!r})
from test_runs import fixed_batches, tiny
from keras_inception.train import training

class Marker(__import__("keras").callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        print("step", flush=True)

training.train(tiny, fixed_batches(), fixed_batches(), sys.argv[1], 5, 2,
               training.Recipe.slim(learning_rate=0.01), extra_callbacks=[Marker()], verbose=0)
"""


def image_source(root) -> data.Source:
    """Three classes of seven random JPEGs of assorted sizes."""
    rng = np.random.default_rng(0)
    for label in "abc":
        (root / label).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(
                root / label / f"{i}.jpg"
            )
    return data.image_folder(str(root))


def dropout_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, name="conv")(inputs))
    outputs = keras.layers.Dense(3, activation="softmax", name="logits")(keras.layers.Dropout(0.5)(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy", metrics=["accuracy"])
    return model


def stream_run(source, directory, crash=None, resumable=True) -> list[np.ndarray]:
    """Three epochs of the seeded pipeline through :func:`runs.fit`; ``crash`` after that epoch."""
    model = dropout_model()

    def stream(start_batch):
        start_batch = start_batch if resumable else 0  # as a pipeline built once would be
        return data.pipeline(source, 4, True, 24, seed=3, repeat=True, start_batch=start_batch)

    validation = data.pipeline(source, 4, False, 24)
    callbacks = [Crash(crash)] if crash is not None else []
    with runs.Run(directory, {"job": 1}, "val_accuracy") as run:
        runs.fit(model, run, stream, validation, 3, steps_per_epoch=5, callbacks=callbacks, verbose=0)
    return model.get_weights()


def test_a_resumed_run_sees_the_batches_and_dropout_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """The seeded pipeline resumed at its batch, and the Dropout generator's state kept in the run:
    killed after epoch 1 and rerun, a run ends with the uninterrupted run's weights, bit for bit.
    Without either, it does not."""
    source = image_source(tmp_path / "images")
    whole = stream_run(source, str(tmp_path / "whole"))

    def resumed(name, forget_dropout=False, **kwargs):
        with pytest.raises(KeyboardInterrupt):
            stream_run(source, str(tmp_path / name), crash=0)
        with open(tmp_path / name / runs.STATE) as f:
            assert len(json.load(f)["seeds"]) == 1  # the Dropout layer's generator
        if forget_dropout:
            monkeypatch.setattr(runs, "seed_states", lambda model: [])
            monkeypatch.setattr(runs, "set_torch_generator_state", lambda state: None)
        return stream_run(source, str(tmp_path / name), **kwargs)

    def worst(weights):
        return max(float(np.abs(a - b).max()) for a, b in zip(whole, weights, strict=True))

    found = {
        "resumed": worst(resumed("cut")),
        "data from the start again": worst(resumed("restarted", resumable=False)),
        "dropout's draws from the start again": worst(resumed("fresh-dropout", forget_dropout=True)),
    }
    print("largest weight difference from the uninterrupted run:", found)
    assert found["resumed"] == 0.0
    assert found["data from the start again"] > 1e-4 and found["dropout's draws from the start again"] > 1e-4


def test_a_resume_without_generator_states_says_dropout_draws_afresh(tmp_path, capsys):
    """A folder whose state holds no generator states (an older version's) resumes with one
    line; a function for ``train_data`` without ``steps_per_epoch`` is refused."""
    model = dropout_model()
    run = runs.Run(str(tmp_path), {"job": 1}, "val_accuracy")
    run.end_epoch(model, 0, {"val_accuracy": 0.5}, "train")
    run.state.pop("seeds")
    assert run.restore(dropout_model(), "train", verbose=1) == 1
    assert capsys.readouterr().err == (
        "the run's state holds 0 random generator states, the model has 1: "
        "its random layers (Dropout) draw afresh from epoch 2\n"
    )
    with pytest.raises(ValueError, match="^a function for train_data needs steps_per_epoch$"):
        runs.fit(dropout_model(), run, lambda start: None, None, 2, verbose=0)
    run.close()


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_ends_like_an_uninterrupted_run(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(KILLED_RUN.format(here=HERE))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    subprocess.run([sys.executable, str(script), whole], env=env, check=True, timeout=600)
    job = subprocess.Popen([sys.executable, str(script), cut], env=env, stdout=subprocess.PIPE, text=True)
    for _ in range(5):  # in the middle of the third epoch
        job.stdout.readline()
    time.sleep(0.3)
    job.send_signal(signal.SIGKILL)
    job.wait()
    subprocess.run([sys.executable, str(script), cut], env=env, check=True, timeout=600)
    assert_same_weights(os.path.join(whole, "final.keras"), os.path.join(cut, "final.keras"))
    assert not [f for f in os.listdir(cut) if f.startswith(".partial")]


def test_a_kill_between_commit_and_rename_never_leaves_a_wrong_best_model(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    run = runs.Run(str(tmp_path), {"job": 1}, "val_top1")
    model.layers[0].kernel.assign(np.ones((2, 1)))
    run.end_epoch(model, 0, {"val_top1": 0.5}, "train")
    (tmp_path / "best-00009.keras").write_bytes(b"from an epoch killed before its commit")

    def killed(*args):
        raise KeyboardInterrupt("killed after state.json, before best.keras")

    model.layers[0].kernel.assign(np.full((2, 1), 3.0))
    monkeypatch.setattr(runs.Run, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        run.end_epoch(model, 1, {"val_top1": 0.9}, "train")
    monkeypatch.undo()
    resumed = runs.Run(str(tmp_path), {"job": 1}, "val_top1")  # finishes the committed epoch
    assert resumed.best == (1, 0.9)
    best = keras.saving.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(best.layers[0].kernel.numpy(), np.full((2, 1), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("best-", "state-"))) == [
        "state-00002.weights.h5"
    ]


def _linear(rate: float) -> keras.Model:
    """A softmax regression: 1e38 overflows it to inf in one step."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(rate), "categorical_crossentropy", metrics=training.metrics(1, 3))
    return model


def _vectors() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def test_a_diverging_run_stops_and_leaves_best_model_and_state_as_they_were(tmp_path):
    out = str(tmp_path)
    settings = {"learning_rate": 0.1, "fine_tune_learning_rate": 1e38}
    with runs.Run(out, settings, "val_top1") as run:
        runs.fit(_linear(0.1), run, _vectors(), _vectors(), 1, phase="head", verbose=0)
    best = (tmp_path / "best.keras").read_bytes()
    state = json.loads((tmp_path / "state.json").read_text())
    phase_2 = {"phase": "fine-tune", "initial_epoch": 1, "label": "phase 2"}
    phase_2["rate_setting"] = "fine_tune_learning_rate"
    with runs.Run(out, settings, "val_top1") as run, pytest.raises(runs.DivergedError) as caught:
        runs.fit(_linear(1e38), run, _vectors(), _vectors(), 3, verbose=0, **phase_2)
    assert str(caught.value) == (
        "stopped: loss became inf in epoch 2 of 3 (phase 2, learning rate 1e+38); best.keras is unchanged "
        f"(epoch 1, val_top1 {state['best']:.4g}). Lower fine_tune_learning_rate and rerun: "
        "the run resumes from epoch 2."
    )
    assert caught.value.message("--fine-tune-learning-rate").endswith(
        "Lower --fine-tune-learning-rate and rerun: the run resumes from epoch 2."
    )
    assert (tmp_path / "best.keras").read_bytes() == best
    after = json.loads((tmp_path / "state.json").read_text())
    assert after.pop("diverged") == {"after_epoch": 1, "setting": "fine_tune_learning_rate"}
    assert after == state  # the diverged epoch is not recorded
    with pytest.raises(ValueError, match=r"holds another run \(learning_rate: 0.1 there, 0.2 now\)"):
        runs.Run(out, {**settings, "learning_rate": 0.2}, "val_top1")  # only the diverged rate may change
    with runs.Run(out, {**settings, "fine_tune_learning_rate": 0.05}, "val_top1") as run:
        assert runs.resume_line(run, 3, lambda epoch: "phase 2") == (
            "resuming from epoch 2 of 3 (phase 2) with fine_tune_learning_rate 0.05 (1e+38 diverged)"
        )
        model = _linear(0.05)
        runs.fit(model, run, _vectors(), _vectors(), 3, verbose=0, **phase_2)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.05)  # not the saved state's rate
    final = json.loads((tmp_path / "state.json").read_text())
    assert final["epoch"] == 3 and "diverged" not in final
    assert json.loads((tmp_path / "run.json").read_text())["fine_tune_learning_rate"] == 0.05


class PoisonStatistics(keras.callbacks.Callback):
    """A NaN moving mean: training steps (batch statistics) stay finite, inference predicts nan."""

    def on_train_batch_end(self, batch, logs=None):
        self.model.get_layer("bn").moving_mean.assign(np.full(4, np.nan, "float32"))


def test_non_finite_weights_stop_a_run_whose_loss_is_finite(tmp_path):
    keras.utils.set_random_seed(0)
    layers = [keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(3, activation="softmax")]
    model = keras.Sequential([keras.Input((4,)), *layers], name="net")
    model.compile("sgd", "categorical_crossentropy", metrics=training.metrics(1, 3))
    with runs.Run(str(tmp_path), {"job": 1}, "val_top1") as run, pytest.raises(runs.DivergedError) as caught:
        runs.fit(model, run, _vectors(), _vectors(), 2, callbacks=[PoisonStatistics()], verbose=0)
    assert str(caught.value) == (
        "stopped: weights became nan or inf (net/bn/moving_mean) in epoch 1 of 2 (learning rate 0.01); "
        "no best.keras was written. Lower learning_rate and rerun: the run resumes from epoch 1."
    )
    assert not (tmp_path / "best.keras").exists() and runs.finished_epochs(str(tmp_path)) == 0


HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from keras_inception.train import runs
runs.acquire_folder(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_while_another_process_writes_the_folder(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(root=os.path.dirname(HERE)))
    out = str(tmp_path / "run")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    holder = subprocess.Popen([sys.executable, str(script), out], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(runs.FolderInUseError) as caught:
            runs.Run(out, {"job": 1}, "val_top1")
        assert str(caught.value) == (
            f"run folder {out} is in use by process {holder.pid} (holder.py {out}); "
            "wait for it to end or choose another output folder"
        )
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the OS releases its lock
        holder.wait()
    with runs.Run(out, {"job": 1}, "val_top1") as run:
        assert run.epoch == 0
        with open(os.path.join(out, runs.LOCK)) as f:
            assert f.read()[1:].startswith(f"{os.getpid()} ")  # the holder now named in the lock file


def test_a_run_refused_before_it_began_leaves_no_folder(tmp_path):
    made, kept = tmp_path / "made", tmp_path / "kept"
    kept.mkdir()
    for folder in (made, kept):
        with runs.locked_folder(str(folder)):
            assert (folder / runs.LOCK).exists()
    assert not made.exists()  # made for the run and left empty: removed with its lock
    assert [p.name for p in kept.iterdir()] == [runs.LOCK]  # the user's folder stays
    with runs.locked_folder(str(made)):
        (made / "state.json").write_text("{}")
    assert (made / "state.json").exists()  # a folder that was written to stays
