"""Training: the paper's recipe, transfer learning, and tf.distribute strategies.

The recipe is Keras's own pieces: ``RMSprop`` (with ``use_ema`` for the parameter
moving average), a staircase ``ExponentialDecay`` behind an optional linear warm-up,
``BackupAndRestore`` (resume after a kill), ``SwapEMAWeights`` (evaluate and save the
averaged weights), ``ModelCheckpoint``, ``CSVLogger`` and ``TensorBoard``.

Keras 3's ``Model.fit`` does not run under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so :func:`distributed_fit` is a training step under
``strategy.run`` over a distributed dataset; every other strategy uses ``fit``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_inception import reporting
from keras_inception.models.base import all_layers

STRATEGIES = ("one-device", "mirrored", "multi-worker", "tpu")


@dataclasses.dataclass
class Recipe:
    """The paper's training recipe (section 4) with TF-slim trainer's additions."""

    learning_rate: float = 0.045
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    rho: float = 0.9  # RMSProp decay
    momentum: float = 0.9
    epsilon: float = 1.0
    weight_decay: float = 4e-5
    label_smoothing: float = 0.1
    aux_weight: float = 0.4
    ema_momentum: float | None = 0.9999  # None: no moving average
    clipnorm: float | None = None
    warmup_epochs: float = 0.0


@keras.saving.register_keras_serializable(package="keras_inception")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``initial``, then ``initial * rate ** floor(step / decay_steps)``."""

    def __init__(self, initial: float, decay_steps: int, rate: float, warmup_steps: int = 0):
        self.initial, self.decay_steps, self.rate, self.warmup_steps = (
            initial,
            decay_steps,
            rate,
            warmup_steps,
        )

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        decayed = self.initial * keras.ops.power(self.rate, keras.ops.floor(step / self.decay_steps))
        if not self.warmup_steps:
            return decayed
        warm = self.initial * (step + 1.0) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "initial": self.initial,
            "decay_steps": self.decay_steps,
            "rate": self.rate,
            "warmup_steps": self.warmup_steps,
        }


def make_optimizer(recipe: Recipe, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """RMSProp (decay 0.9, momentum 0.9, epsilon 1.0) with the paper's learning-rate decay.

    Weight decay is Keras's decoupled ``weight_decay`` on kernels (BatchNorm betas and
    biases excluded); slim added an L2 loss instead, see the README.
    """
    schedule = WarmupExponentialDecay(
        recipe.learning_rate,
        max(1, round(recipe.decay_epochs * steps_per_epoch)),
        recipe.decay_rate,
        round(recipe.warmup_epochs * steps_per_epoch),
    )
    optimizer = keras.optimizers.RMSprop(
        learning_rate=schedule,
        rho=recipe.rho,
        momentum=recipe.momentum,
        epsilon=recipe.epsilon,
        weight_decay=recipe.weight_decay or None,
        clipnorm=recipe.clipnorm,
        use_ema=recipe.ema_momentum is not None,
        ema_momentum=recipe.ema_momentum or 0.99,
    )
    if recipe.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["beta", "bias"])
    return optimizer


def losses(model: keras.Model, recipe: Recipe):
    """Categorical cross-entropy with label smoothing; the aux head weighted ``aux_weight``."""
    from_logits = model.output_names[0] == "Logits"  # built with classifier_activation=None
    loss = keras.losses.CategoricalCrossentropy(
        label_smoothing=recipe.label_smoothing, from_logits=from_logits
    )
    if len(model.outputs) == 2:
        return [loss, loss], [1.0, recipe.aux_weight]
    return loss, None


def metrics(num_outputs: int = 1):
    top = [
        keras.metrics.CategoricalAccuracy(name="top1"),
        keras.metrics.TopKCategoricalAccuracy(5, name="top5"),
    ]
    return [top, []] if num_outputs == 2 else top


def compile_recipe(model: keras.Model, recipe: Recipe, steps_per_epoch: int, jit_compile: bool = False):
    loss, weights = losses(model, recipe)
    model.compile(
        optimizer=make_optimizer(recipe, steps_per_epoch),
        loss=loss,
        loss_weights=weights,
        metrics=metrics(len(model.outputs)),
        jit_compile=jit_compile,
    )
    return model


def callbacks(
    output_dir: str, monitor: str = "val_top1", ema: bool = False, tensorboard: bool = True
) -> list:
    """Resume state, best ``.keras`` model, CSV history, TensorBoard (and EMA swapping)."""
    os.makedirs(output_dir, exist_ok=True)
    out = []
    if ema:  # evaluate and save with the moving-average weights
        out.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    out += [
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(output_dir, "best.keras"), monitor=monitor, mode="max", save_best_only=True
        ),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=True),
    ]
    if tensorboard:
        out.append(keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")))
    return out


def get_strategy(name: str = "one-device", tpu: str | None = None) -> tf.distribute.Strategy:
    """``one-device`` (default device), ``mirrored`` (all local GPUs), ``multi-worker``
    (several machines, from ``TF_CONFIG``), ``tpu``."""
    if name == "one-device":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")


def sync_batch_norm(model: keras.Model) -> None:
    """Use global-batch BatchNorm statistics across replicas (as one device would)."""
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def train(
    build_model: Callable[[], keras.Model],
    train_data: tf.data.Dataset,
    validation_data: tf.data.Dataset | None,
    output_dir: str,
    epochs: int,
    steps_per_epoch: int,
    recipe: Recipe | None = None,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    extra_callbacks: list | None = None,
    verbose: int | str = "auto",
) -> keras.Model:
    """Train with the recipe under ``strategy`` (not multi-worker: see :func:`distributed_fit`).

    Rerunning with the same ``output_dir`` after a kill resumes at the epoch it
    stopped, with the optimizer state. Writes ``best.keras`` (by validation top-1,
    with the averaged weights), ``history.csv``, TensorBoard logs, and
    ``final.keras`` holding the moving-average weights.
    """
    recipe = recipe or Recipe()
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model()
        compile_recipe(model, recipe, steps_per_epoch, jit_compile)
    ema = recipe.ema_momentum is not None
    monitor = "val_top1" if validation_data is not None else "top1"
    if len(model.outputs) == 2:
        monitor = monitor.replace("top1", "Predictions_top1")
    model.fit(
        train_data,
        validation_data=validation_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks(output_dir, monitor, ema) + list(extra_callbacks or []),
        verbose=verbose,
    )
    if ema:
        model.optimizer.finalize_variable_values(model.trainable_variables)
    model.save(os.path.join(output_dir, "final.keras"))
    return model


def train_network(
    model_name: str,
    source,
    validation,
    output_dir: str,
    *,
    epochs: int,
    steps_per_epoch: int | None,
    batch_size: int,
    image_size: int,
    recipe: Recipe,
    strategy: str = "one-device",
    tpu: str | None = None,
    aux_logits: bool = False,
    sync_bn: bool = False,
    mixed_precision: str | None = None,
    xla: bool = False,
    width: float = 1.0,
    depths=None,
    seed: int = 0,
) -> keras.Model:
    """Train ``model_name`` from scratch on ``source`` (a :class:`data.Source`) with ``recipe``.

    ``strategy`` is one of :data:`STRATEGIES`; ``multi-worker`` trains with
    :func:`distributed_fit` on each worker's shard of the data, every other strategy
    with :func:`train`. Writes ``final.keras`` (and, with ``fit``, the resume state,
    ``best.keras`` and the history) into ``output_dir``.
    """
    from keras_inception import data
    from keras_inception.models import get

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if strategy == "multi-worker":
        unsupported = {
            "--val-data": validation is not None,
            "--xla": xla,
            "--aux-logits": aux_logits,
            "the moving average (pass --no-ema)": recipe.ema_momentum is not None,
        }
        if any(unsupported.values()):
            raise ValueError(
                "the multi-worker loop does not support " + ", ".join(k for k, v in unsupported.items() if v)
            )
    if mixed_precision:
        keras.config.set_dtype_policy(f"mixed_{mixed_precision}")
    steps = steps_per_epoch or (source.num_examples // batch_size if source.num_examples else None)
    if not steps:
        raise ValueError("the dataset size is unknown (TFRecords): pass --steps-per-epoch")
    builder = get(model_name)
    extra = {"width": width} | ({"depths": tuple(depths)} if depths else {})

    def build() -> keras.Model:
        model = builder(
            weights=None,
            classes=source.num_classes,
            input_shape=(image_size, image_size, 3),
            aux_logits=aux_logits,
            **extra,
        )
        if sync_bn:
            sync_batch_norm(model)
        return model

    def pipeline(src, is_training: bool, batch: int):
        return data.pipeline(
            src,
            batch,
            is_training,
            image_size,
            aux_logits=aux_logits and is_training,
            repeat=is_training,
            seed=seed,
        )

    keras.utils.set_random_seed(seed)
    distribution = get_strategy(strategy, tpu)
    if strategy != "multi-worker":
        val = pipeline(validation, False, batch_size) if validation else None
        return train(
            build,
            pipeline(source, True, batch_size),
            val,
            output_dir,
            epochs,
            steps,
            recipe,
            distribution,
            xla,
        )

    def dataset_fn(context: tf.distribute.InputContext):
        shard = data.Source(
            source.dataset.shard(context.num_input_pipelines, context.input_pipeline_id),
            source.class_names,
            None,
        )
        return pipeline(shard, True, context.get_per_replica_batch_size(batch_size))

    model, _ = distributed_fit(
        distribution,
        build,
        dataset_fn,
        batch_size,
        epochs * steps,
        recipe,
        steps,
        checkpoint_dir=os.path.join(output_dir, "backup"),
    )
    model.save(os.path.join(output_dir, "final.keras"))
    return model


class ResidualDeathMonitor(keras.callbacks.Callback):
    """Detects the paper's "dying" residual networks (section 3.3).

    Every ``every`` batches, the features entering the final average pool are
    computed for ``probe`` images; when at least ``zero_fraction`` of them are exactly
    zero, or the loss is not finite or above ``max_loss``, the network has died.
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
        features = np.asarray(self._features(self.probe, training=False))
        zeros = float(np.mean(features == 0.0))
        self.trace.append((self._step, zeros))
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


# ---------------------------------------------------------------- transfer learning


def transfer_model(
    model_name: str,
    num_classes: int,
    weights="imagenet",
    image_size: int = 299,
    dropout_rate: float = 0.2,
    **model_kwargs,
) -> tuple[keras.Model, keras.Model]:
    """``(model, base)``: a new classifier on a frozen pretrained base.

    ``weights`` is a tag or a weights file of the base (``include_top=False,
    pooling="avg"``); ``model_kwargs`` go to the builder (``width``, ``depths``...).

    The base is called with ``training=False``, so its BatchNormalization layers stay in
    inference mode (moving statistics used and kept) even after :func:`unfreeze`.
    """
    from keras_inception.models import get

    base = get(model_name)(
        include_top=False,
        weights=weights,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
        **model_kwargs,
    )
    base.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = base(inputs, training=False)
    x = keras.layers.Dropout(dropout_rate, name="Logits.Dropout_1b")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="Predictions")(x)
    return keras.Model(inputs, outputs, name=f"{model_name}_transfer"), base


def unfreeze(base: keras.Model, from_block: str = "Mixed_7a") -> int:
    """Make ``base`` trainable from the block ``from_block`` on (BatchNorm stays frozen).

    Returns the number of layers made trainable.
    """
    names = [layer.name for layer in base.layers]
    starts = [i for i, n in enumerate(names) if n == from_block or n.startswith(f"{from_block}.")]
    if not starts:
        blocks = sorted({n.split(".")[0] for n in names if n.startswith("Mixed_")})
        raise ValueError(f"no block {from_block!r} in {base.name}; blocks: {blocks}")
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= starts[0] and not isinstance(layer, keras.layers.BatchNormalization)
        count += layer.trainable and bool(layer.weights)
    return count


def finetune(
    data: str,
    model_name: str = "inception_v4",
    weights="imagenet",
    output_dir: str = "finetune_output",
    epochs: int = 5,
    fine_tune_epochs: int = 0,
    unfreeze_from: str = "Mixed_7a",
    learning_rate: float = 1e-3,
    fine_tune_learning_rate: float = 1e-4,
    batch_size: int = 32,
    image_size: int = 299,
    validation_split: float = 0.1,
    augment=(),
    seed: int = 0,
    verbose: int | str = "auto",
    model_kwargs: dict | None = None,
    on_error: str = "skip",
) -> dict:
    """Fine-tune on an image folder (one subfolder per class); returns the history.

    Phase 1 trains a new head on the frozen base; phase 2 (``fine_tune_epochs``)
    unfreezes from ``unfreeze_from`` at ``fine_tune_learning_rate``. Keeps
    ``best.keras`` (best validation top-1), ``history.csv``, ``history.json`` and
    ``curves.png`` in ``output_dir``.
    """
    from keras_inception import data as data_lib

    train_src, val_src = data_lib.split_folder(data, validation_split, seed, on_error)
    train = data_lib.pipeline(train_src, batch_size, True, image_size, seed=seed, augment=augment)
    val = data_lib.pipeline(val_src, batch_size, False, image_size)
    model, base = transfer_model(
        model_name, train_src.num_classes, weights, image_size, **(model_kwargs or {})
    )
    history: dict[str, list] = {}

    def run(lr: float, initial_epoch: int, total: int) -> None:
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=metrics(),
        )
        h = model.fit(
            train,
            validation_data=val,
            epochs=total,
            initial_epoch=initial_epoch,
            callbacks=callbacks(output_dir, tensorboard=False),
            verbose=verbose,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)

    run(learning_rate, 0, epochs)
    if fine_tune_epochs:
        unfreeze(base, unfreeze_from)
        run(fine_tune_learning_rate, epochs, epochs + fine_tune_epochs)
    summary = {
        "classes": train_src.class_names,
        "train_images": train_src.num_examples,
        "validation_images": val_src.num_examples,
        "skipped_files": train_src.skipped + val_src.skipped,
        "history": history,
    }
    with open(os.path.join(output_dir, "history.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_history(history, os.path.join(output_dir, "curves.png"))
    return summary


def plot_history(history: dict[str, list], path: str) -> str | None:
    """Loss and top-1 curves as a PNG (needs matplotlib, the ``plot`` extra)."""

    def series(key: str) -> dict:
        return {k: (range(1, len(history[k]) + 1), history[k]) for k in (key, f"val_{key}") if k in history}

    panels = [reporting.Panel(key, "epoch", key, series(key)) for key in ("loss", "top1")]
    return reporting.plot(path, panels)


# ---------------------------------------------------------------- multi-worker


def distributed_fit(
    strategy: tf.distribute.Strategy,
    build_model: Callable[[], keras.Model],
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
    global_batch_size: int,
    steps: int,
    recipe: Recipe,
    steps_per_epoch: int,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 10,
) -> tuple[keras.Model, list[float]]:
    """Train under ``strategy.run`` (any strategy, MultiWorkerMirrored included).

    ``dataset_fn(input_context)`` returns each worker's dataset batched to
    ``input_context.get_per_replica_batch_size(global_batch_size)``. Losses are averaged
    over the global batch, so the update equals one device's on the same global batch.
    With ``checkpoint_dir``, model and optimizer state are saved every ``checkpoint_every``
    steps (chief to ``checkpoint_dir``, other workers to throw-away folders) and
    training resumes from the latest checkpoint.
    """
    with strategy.scope():
        model = build_model()
        optimizer = make_optimizer(dataclasses.replace(recipe, ema_momentum=None), steps_per_epoch)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.CategoricalCrossentropy(
            label_smoothing=recipe.label_smoothing, reduction="none"
        )
    manager = _checkpoint_manager(strategy, model, optimizer, checkpoint_dir)
    start = int(optimizer.iterations.numpy())
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))

    @tf.function
    def train_step(iterator):
        def replica_step(x, y):
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                per_example = loss_fn(y, predictions)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per_replica = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    losses_seen = []
    for step in range(start, steps):
        losses_seen.append(float(train_step(iterator)))
        if manager and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            manager.save(checkpoint_number=step + 1)
    return model, losses_seen


def _checkpoint_manager(strategy, model, optimizer, checkpoint_dir):
    if not checkpoint_dir:
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    task = resolver.task_type if resolver else None
    chief = task in (None, "chief") or (task == "worker" and resolver.task_id == 0)
    directory = checkpoint_dir if chief else os.path.join(checkpoint_dir, f".worker_{resolver.task_id}")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest)
    return manager
