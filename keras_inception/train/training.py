"""Training: slim's recipe, one definition of the loss, tf.distribute strategies.

:func:`compile_model` is the one place the loss (label smoothing, aux weight,
from-logits read from the model's output layer), the weight decay, the optimizer
with its parameter averages and the metrics are set; :func:`train` runs ``fit`` in a
resumable :class:`~keras_inception.train.runs.Run`; :func:`distributed_fit` runs the same
loss and optimizer step under ``strategy.run`` for ``MultiWorkerMirroredStrategy``,
where Keras 3's ``fit`` does not run (keras-team/keras#20585).

slim's recipe (``train_image_classifier.py`` with the Inception arg scopes), exactly:
RMSProp as TF1's (decay 0.9, momentum 0.9, epsilon 1.0, accumulators starting at
1.0), the L2 loss ``4e-5 * sum(w^2) / 2`` on every kernel (and bias, for
Inception-ResNet-v2) added to the total loss, ``ExponentialMovingAverage(0.9999,
num_updates=global_step)`` over all model variables (BatchNorm statistics
included), learning rate 0.045 x 0.94 every 2 epochs (staircase), label smoothing
0.1, aux loss weight 0.4. The initializers are the builders' (see ``registry``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Sequence

import keras

from keras_inception.core.startup import import_tensorflow

tf = import_tensorflow(__name__, "tf.data and tf.distribute training")

from keras_inception.core import registry  # noqa: E402
from keras_inception.models.base import all_layers  # noqa: E402
from keras_inception.nn.layers import VARIANCE_UPDATES, BatchNorm, output_layers  # noqa: E402
from keras_inception.train import runs  # noqa: E402
from keras_inception.train.optimizers import SlimRMSprop, WarmupExponentialDecay  # noqa: E402
from keras_inception.train.remat import forward, rematerialize  # noqa: E402

STRATEGIES = ("one-device", "mirrored", "multi-worker", "tpu")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


@dataclasses.dataclass
class Recipe:
    """A training recipe; :meth:`slim` is slim's (the default of ``train``).

    Attributes:
        weight_decay_mode: ``"l2"``, slim's L2 loss ``weight_decay * sum(w^2) / 2``
            added to the loss; or ``"decoupled"``, Keras's decoupled weight decay
            (``w -= lr * weight_decay * w``; biases and BatchNorm betas excluded).
        ema_decay: decay of the parameter moving average (``None``: none); slim's
            warm-up ``min(ema_decay, (1 + step) / (10 + step))`` applies.
        moving_variance: the batch variance BatchNorm's moving variance takes:
            ``"unbiased"`` (times ``n / (n - 1)``, ``n`` the values per channel), as slim's
            fused batch norm does, or ``"biased"``, Keras's. :func:`compile_model` sets it
            on every :class:`~keras_inception.nn.layers.BatchNorm` (``variance_update``).
    """

    learning_rate: float = 0.045
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    rho: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1.0
    weight_decay: float = 4e-5
    weight_decay_mode: str = "l2"
    label_smoothing: float = 0.1
    aux_weight: float = 0.4
    ema_decay: float | None = 0.9999
    clipnorm: float | None = None
    warmup_epochs: float = 0.0
    moving_variance: str = "unbiased"

    @classmethod
    def slim(cls, **changes) -> Recipe:
        """slim's recipe (module docstring), with ``changes``."""
        return cls(**changes)

    @classmethod
    def plain(cls) -> Recipe:
        """slim's optimizer and cross-entropy alone (a constant learning rate; no weight
        decay, label smoothing or parameter averages): the step the benchmarks time against timm's."""
        return cls(decay_rate=1.0, weight_decay=0.0, label_smoothing=0.0, ema_decay=None)

    def __post_init__(self):
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, got {self.weight_decay_mode!r}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.moving_variance not in VARIANCE_UPDATES:
            raise ValueError(
                f"moving_variance must be one of {VARIANCE_UPDATES}, got {self.moving_variance!r}"
            )


def make_optimizer(recipe: Recipe, steps_per_epoch: int) -> SlimRMSprop:
    """slim's RMSProp with the recipe's learning-rate schedule (and decoupled decay if chosen)."""
    schedule = WarmupExponentialDecay(
        recipe.learning_rate,
        max(1, round(recipe.decay_epochs * steps_per_epoch)),
        recipe.decay_rate,
        round(recipe.warmup_epochs * steps_per_epoch),
    )
    decoupled = recipe.weight_decay_mode == "decoupled" and recipe.weight_decay
    optimizer = SlimRMSprop(
        learning_rate=schedule,
        rho=recipe.rho,
        momentum=recipe.momentum,
        epsilon=recipe.epsilon,
        ema_decay=recipe.ema_decay,
        weight_decay=recipe.weight_decay if decoupled else None,
        clipnorm=recipe.clipnorm,
    )
    if decoupled:
        optimizer.exclude_from_weight_decay(var_names=["beta", "bias"])
    return optimizer


def add_l2_loss(model: keras.Model, weight_decay: float, biases: bool = False) -> int:
    """slim's ``l2_regularizer(weight_decay)`` on every kernel (and bias): ``weight_decay * sum(w^2) / 2``.

    Returns how many variables were regularised.
    """
    count = 0
    for layer in all_layers(model):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            for variable in [layer.kernel] + ([layer.bias] if biases and layer.use_bias else []):
                variable.regularizer = keras.regularizers.L2(weight_decay / 2.0)
                count += 1
    return count


def set_variance_update(model: keras.Model, update: str) -> int:
    """Set every :class:`~keras_inception.nn.layers.BatchNorm`'s moving-variance update
    (``"unbiased"`` or ``"biased"``); returns how many were set. Keras's own
    ``BatchNormalization`` layers keep Keras's biased update (a warning says how many).
    """
    norms = [layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    ours = [layer for layer in norms if isinstance(layer, BatchNorm)]
    for layer in ours:
        layer.variance_update = update
    if update == "unbiased" and len(ours) < len(norms):
        warnings.warn(
            f"{len(norms) - len(ours)} BatchNormalization layers are Keras's own: their moving variance "
            "keeps Keras's biased update (keras_inception.nn.layers.BatchNorm takes the unbiased one)",
            stacklevel=3,
        )
    return len(ours)


def outputs_logits(model: keras.Model) -> bool:
    """Whether the model's outputs are logits, read from its output layers' activation."""
    kinds = set()
    for layer in output_layers(model):
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", str(activation))
        if name not in ("linear", "softmax"):
            raise ValueError(
                f"output {layer.name} is neither logits nor a softmax ({name}): cannot choose the loss"
            )
        kinds.add(name == "linear")
    if len(kinds) != 1:
        raise ValueError("the model mixes logits and softmax outputs")
    return kinds.pop()


def loss_spec(model: keras.Model, recipe: Recipe) -> tuple[list, list[float]]:
    """One cross-entropy per output (label smoothing, logits or probabilities) and their weights."""
    loss = keras.losses.CategoricalCrossentropy(
        label_smoothing=recipe.label_smoothing, from_logits=outputs_logits(model)
    )
    weights = [1.0, recipe.aux_weight][: len(model.outputs)]
    return [loss] * len(model.outputs), weights


def metrics(num_outputs: int = 1, classes: int = 1000):
    """Top-1, and top-5 where there are more than 5 classes (it is 1 otherwise, and the
    PyTorch backend's ``topk`` refuses ``k`` above the class count)."""
    top = [keras.metrics.CategoricalAccuracy(name="top1")]
    if classes > 5:
        top.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    return [top, []] if num_outputs == 2 else top


def compile_model(
    model: keras.Model,
    recipe: Recipe,
    steps_per_epoch: int,
    jit_compile: bool = False,
    l2_biases: bool = False,
    top_k_metrics: bool = True,
    remat: Sequence[str] | bool | None = None,
) -> keras.Model:
    """Compile with the recipe: loss, weight decay, optimizer with averages, top-1 / top-5 metrics,
    BatchNorm's moving-variance update.

    ``remat``: the end points up to which a training step recomputes its activations in
    the backward pass (:func:`keras_inception.train.remat.rematerialize`; ``None`` or ``True``:
    the stem's, where it can; ``()`` or ``False``: none). On JAX and PyTorch the run says
    once what stays TensorFlow-only (:data:`TENSORFLOW_ONLY`) and carries on.
    """
    if keras.backend.backend() != "tensorflow":
        _note_tensorflow_only(keras.backend.backend())
    if recipe.weight_decay and recipe.weight_decay_mode == "l2":
        add_l2_loss(model, recipe.weight_decay, l2_biases)
    set_variance_update(model, recipe.moving_variance)
    losses, weights = loss_spec(model, recipe)
    optimizer = make_optimizer(recipe, steps_per_epoch)
    optimizer.build(model.trainable_variables)
    optimizer.track_averages(model.weights)
    model.compile(
        optimizer=optimizer,
        loss=losses if len(losses) > 1 else losses[0],
        loss_weights=weights if len(weights) > 1 else None,
        metrics=metrics(len(model.outputs), model.outputs[0].shape[-1]) if top_k_metrics else None,
        jit_compile=jit_compile,
    )
    model = rematerialize(model, remat)  # first: it takes back an earlier train_step
    if keras.backend.backend() == "jax":
        _average_untrained_in_jax_steps(model)
    return model


def _average_untrained_in_jax_steps(model: keras.Model) -> None:
    """On JAX, move the averages of the variables the optimizer does not train (BatchNorm's
    moving statistics, frozen layers) in the model's step, after its forward pass.

    JAX's trainer gives the optimizer only the trained variables' values; the moving
    statistics of this step exist only in the state the step returns, so their averages move
    there, as on the other backends: after the step, by :meth:`SlimRMSprop.moved`.
    """
    optimizer = model.optimizer
    if not getattr(optimizer, "averages", None):
        return
    slots = {id(v): i for i, v in enumerate(optimizer.variables)}
    untrained = {id(v): i for i, v in enumerate(model.non_trainable_variables)}
    pairs = [
        (slots[id(average)], untrained[id(variable)])
        for variable, average in zip(optimizer.averaged_variables, optimizer.averages, strict=True)
        if id(variable) in untrained
    ]
    steps = slots[id(optimizer.iterations)]
    step = type(model).train_step.__get__(model)

    def train_step(state, data):
        logs, (trained, statistics, slots_now, metrics_now) = step(state, data)
        slots_now = list(slots_now)
        for slot, index in pairs:
            slots_now[slot] = optimizer.moved(slots_now[slot], statistics[index], slots_now[steps])
        return logs, (trained, statistics, slots_now, metrics_now)

    model.train_step = train_step
    model.make_train_function(force=True)  # a step made before would not run this one


TENSORFLOW_ONLY = (
    "on the {} backend, training runs without what is TensorFlow-only: TF1's RMSProp kernel "
    "(the same update runs in Keras ops) and the stem's rematerialisation (every activation is kept)"
)


@functools.cache
def _note_tensorflow_only(backend: str) -> None:
    """Says :data:`TENSORFLOW_ONLY` once per process."""
    warnings.warn(TENSORFLOW_ONLY.format(backend), stacklevel=3)


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


def _monitor(model: keras.Model, validation: bool) -> str:
    name = "val_top1" if validation else "top1"
    return name.replace("top1", "Predictions_top1") if len(model.outputs) == 2 else name


def train(
    build_model: Callable[[], keras.Model],
    train_data: tf.data.Dataset | Callable[[int], tf.data.Dataset],
    validation_data: tf.data.Dataset | None,
    output_dir: str,
    epochs: int,
    steps_per_epoch: int,
    recipe: Recipe | None = None,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = False,
    extra_callbacks: list | None = None,
    verbose: int | str = "auto",
    settings: dict | None = None,
    l2_biases: bool = False,
    remat: Sequence[str] | bool | None = None,
) -> keras.Model:
    """Train with the recipe under ``strategy`` (not multi-worker: see :func:`distributed_fit`).

    ``output_dir`` is a :class:`~keras_inception.train.runs.Run`: rerunning into it after a
    kill resumes at the epoch it stopped, optimizer and averages included, and with
    ``train_data`` a function of the batch to start at (see :func:`runs.fit`), on the batches
    the killed run would have seen; ``best.keras``
    is the best validation (or training) top-1 with the averaged weights;
    ``final.keras`` holds the averaged weights, and so does the returned model.
    ``settings`` identify the run (default: the model's name and the recipe). ``remat``:
    as :func:`compile_model`'s. Stops with :class:`~keras_inception.train.runs.DivergedError`
    at the first non-finite loss or weights, ``best.keras`` and the state left as they were.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    recipe = recipe or Recipe.slim()
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model()
        compile_model(model, recipe, steps_per_epoch, jit_compile, l2_biases, remat=remat)
    settings = settings or {"model": model.name, "recipe": dataclasses.asdict(recipe)}
    settings = {**settings, "steps_per_epoch": steps_per_epoch}
    with runs.Run(output_dir, settings, _monitor(model, bool(validation_data))) as run:
        runs.say(verbose, runs.resume_line(run, epochs))
        tensorboard = keras.callbacks.TensorBoard(os.path.join(output_dir, "logs"))
        runs.fit(
            model,
            run,
            train_data,
            validation_data,
            epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[tensorboard, *(extra_callbacks or [])],
            verbose=verbose,
            rate_setting="recipe.learning_rate",
        )
        runs.swap_averages(model)  # from here on the model is the averaged one
        runs.save_model(model, os.path.join(output_dir, "final.keras"))
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
    remat: bool = True,
    verbose: int | str = "auto",
) -> keras.Model:
    """Train ``model_name`` from scratch on ``source`` (a :class:`data.Source`) with ``recipe``.

    ``strategy`` is one of :data:`STRATEGIES`; ``multi-worker`` trains with
    :func:`distributed_fit` on each worker's shard of the data, every other strategy
    with :func:`train`. Writes ``final.keras`` into ``output_dir`` (and with ``train``
    the resume state, ``best.keras`` and the history). ``remat``: recompute the stem in
    the backward pass (:func:`compile_model`'s default), or keep all its activations.
    Says on stderr what it will train (unless ``verbose`` is 0).
    """
    from keras_inception.input import pipelines as data
    from keras_inception.models import get

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if strategy == "multi-worker":
        unsupported = {"validation=DATA": validation is not None, "xla=True": xla}
        if any(unsupported.values()):
            raise ValueError(
                "the multi-worker loop does not support " + ", ".join(k for k, v in unsupported.items() if v)
            )
    if mixed_precision:
        keras.config.set_dtype_policy(f"mixed_{mixed_precision}")
    steps = steps_per_epoch or (source.num_examples // batch_size if source.num_examples else None)
    if not steps:
        raise ValueError("the dataset size is unknown (TFRecords): pass steps_per_epoch=N")
    builder = get(model_name)
    extra = {"width": width} | ({"depths": tuple(depths)} if depths else {})
    l2_biases = registry.family(model_name).l2_biases

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

    def pipeline(src, is_training: bool, batch: int, start_batch: int = 0):
        return data.pipeline(
            src,
            batch,
            is_training,
            image_size,
            aux_logits=aux_logits and is_training,
            repeat=is_training,
            seed=seed,
            start_batch=start_batch,
        )

    def training_stream(start_batch: int):  # where the interrupted run would have gone on
        if start_batch and source.num_examples is None:
            runs.say(verbose, "resuming with the data stream from its start: the dataset's size is unknown")
            start_batch = 0
        return pipeline(source, True, batch_size, start_batch)

    images = f"{source.num_examples} training images" if source.num_examples else "training images uncounted"
    if validation is not None:
        images += f", {validation.num_examples or 'uncounted'} validation"
    runs.say(verbose, f"{runs.describe_classes(source.class_names)}; {images}")
    runs.say(
        verbose,
        f"training {model_name} from scratch: {epochs} epoch{'s' if epochs > 1 else ''} of {steps} steps "
        f"(batch {batch_size}) at learning rate {recipe.learning_rate:g}",
    )
    keras.utils.set_random_seed(seed)
    distribution = get_strategy(strategy, tpu)
    settings = {
        "model": model_name,
        "classes": source.num_classes,
        "image_size": image_size,
        "batch_size": batch_size,
        "aux_logits": aux_logits,
        "width": width,
        "depths": list(depths or []),
        "seed": seed,
        "recipe": dataclasses.asdict(recipe),
        "mixed_precision": mixed_precision,
    }
    if strategy != "multi-worker":
        val = pipeline(validation, False, batch_size) if validation else None
        return train(
            build,
            training_stream,
            val,
            output_dir,
            epochs,
            steps,
            recipe,
            distribution,
            xla,
            settings=settings,
            l2_biases=l2_biases,
            remat=remat,
            verbose=verbose,
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
        l2_biases=l2_biases,
        remat=remat,
    )
    runs.swap_averages(model)
    runs.save_model(model, os.path.join(output_dir, "final.keras"))
    return model


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
    l2_biases: bool = False,
    remat: Sequence[str] | bool | None = None,
) -> tuple[keras.Model, list[float]]:
    """The step of :func:`compile_model`'s loss and optimizer under ``strategy.run``.

    ``dataset_fn(input_context)`` returns each worker's dataset batched to
    ``input_context.get_per_replica_batch_size(global_batch_size)``. Losses are averaged
    over the global batch (regularisation scaled by the replicas), so the update equals
    one device's on the same global batch. With ``checkpoint_dir``, model and
    optimizer state (averages included) are saved every ``checkpoint_every`` steps
    (chief to ``checkpoint_dir``, other workers to throw-away folders) and training
    resumes from the latest checkpoint. ``remat``: as :func:`compile_model`'s.
    """
    with strategy.scope():
        model = build_model()
        compile_model(model, recipe, steps_per_epoch, l2_biases=l2_biases, remat=False)  # fit's step
        run = forward(model, remat)  # this loop's
        optimizer = model.optimizer
        losses, weights = loss_spec(model, recipe)
    manager = _checkpoint_manager(strategy, model, optimizer, checkpoint_dir)
    start = int(optimizer.iterations.numpy())
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    reduction_none = [_per_example(loss) for loss in losses]

    @tf.function
    def train_step(iterator):
        def replica_step(x, y):
            targets = list(y) if len(model.outputs) > 1 else [y]
            with tf.GradientTape() as tape:
                outputs = run(x)
                outputs = list(outputs) if len(model.outputs) > 1 else [outputs]
                per_example = sum(
                    w * f(t, o) for f, w, t, o in zip(reduction_none, weights, targets, outputs, strict=True)
                )
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
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


def _per_example(loss: keras.losses.Loss) -> keras.losses.Loss:
    """The same loss without its batch reduction."""
    return type(loss).from_config({**loss.get_config(), "reduction": None})


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
