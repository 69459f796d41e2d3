"""Transfer learning: a new classifier on a pretrained base, then its top blocks unfrozen.

The base is called with ``training=False``, so its BatchNormalization layers stay in
inference mode (ImageNet statistics used and kept) in both phases, and BatchNorm
stays frozen when the top blocks are unfrozen. Both phases run in one
:class:`~keras_inception.train.runs.Run`: ``best.keras`` is the best validation top-1 of the
whole run, and a killed run resumes where it stopped, in either phase. The run says
what it will do on stderr (classes, images, phases, where it resumes) and each phase change.
"""

from __future__ import annotations

import keras

from keras_inception.core import registry
from keras_inception.input import pipelines as data
from keras_inception.models import get
from keras_inception.nn.layers import SEPARATOR, ClassifierOutput, keras_name
from keras_inception.train import runs, training

MONITOR = "val_top1"


def transfer_model(
    model_name: str,
    class_names: list[str],
    weights="imagenet",
    image_size: int = 299,
    dropout_rate: float = 0.2,
    **model_kwargs,
) -> tuple[keras.Model, keras.Model]:
    """``(model, base)``: a new softmax classifier over ``class_names`` on a frozen base.

    ``weights`` is a tag or a weights file of the base (``include_top=False,
    pooling="avg"``); ``model_kwargs`` go to the builder (``width``, ``depths``...). The
    class names are saved with the model.
    """
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
    x = keras.layers.Dropout(dropout_rate, name=keras_name(registry.HEAD_DROPOUT_SCOPE))(x)  # hub finds them
    x = keras.layers.Dense(len(class_names), name=keras_name(registry.DENSE_LOGITS_SCOPE))(x)
    outputs = ClassifierOutput("softmax", class_names, name="Predictions")(x)
    return keras.Model(inputs, outputs, name=f"{model_name}_transfer"), base


def unfreeze(base: keras.Model, from_block: str = "Mixed_7a") -> int:
    """Make ``base`` trainable from the block ``from_block`` on (BatchNorm stays frozen).

    Returns the number of layers with weights made trainable.
    """
    names = [layer.name for layer in base.layers]
    starts = [i for i, n in enumerate(names) if n == from_block or n.startswith(f"{from_block}{SEPARATOR}")]
    if not starts:
        blocks = sorted({n.split(SEPARATOR)[0] for n in names if n.startswith("Mixed_")})
        raise ValueError(f"no block {from_block!r} in {base.name}; blocks: {blocks}")
    base.trainable = True
    count = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= starts[0] and not isinstance(layer, keras.layers.BatchNormalization)
        count += layer.trainable and bool(layer.weights)
    return count


def finetune(
    data_dir: str,
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
    validation_dir: str | None = None,
    augment=(),
    seed: int = 0,
    on_error: str = "skip",
    verbose: int | str = "auto",
    model_kwargs: dict | None = None,
) -> dict:
    """Fine-tune on an image folder (one subfolder per class); returns a summary.

    Validation images are ``validation_dir`` (same classes) or a seeded
    ``validation_split`` of ``data_dir``. Phase 1 trains the new head for ``epochs``
    with Adam at ``learning_rate``; phase 2 unfreezes from ``unfreeze_from`` for
    ``fine_tune_epochs`` more at ``fine_tune_learning_rate``. ``output_dir`` holds
    ``best.keras``, ``history.csv``, ``history.json`` and ``curves.png``; rerunning the
    same call resumes it, and a call with other settings is refused.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1 (the new head must be trained first), got {epochs}")
    if fine_tune_epochs < 0:
        raise ValueError(f"fine_tune_epochs must be 0 or more, got {fine_tune_epochs}")
    with runs.locked_folder(output_dir):  # before the data are read: a second run is refused at once
        if validation_dir:
            train_src = data.image_folder(data_dir, on_error)
            val_src = data.image_folder(validation_dir, on_error, class_names=train_src.class_names)
        else:
            train_src, val_src = data.split_folder(data_dir, validation_split, seed, on_error)
        skipped = train_src.skipped + val_src.skipped
        runs.say(verbose, runs.describe_classes(train_src.class_names))
        runs.say(
            verbose,
            f"images: {train_src.num_examples} train, {val_src.num_examples} validation"
            + (f"; {len(skipped)} unreadable files skipped: {', '.join(skipped[:3])}" if skipped else "")
            + ("" if len(skipped) <= 3 else ", ..."),
        )
        total = epochs + fine_tune_epochs
        head = f"phase 1: new head, frozen base, {_epochs(epochs)} at learning rate {learning_rate:g}"
        tune = f"phase 2: unfreezing from {unfreeze_from}, {_epochs(fine_tune_epochs)} at learning rate"
        runs.say(verbose, head + (f"; {tune} {fine_tune_learning_rate:g}" if fine_tune_epochs else ""))
        settings = {
            "data": data_dir,
            "validation": validation_dir or validation_split,
            "model": model_name,
            "weights": str(weights),
            "epochs": epochs,
            "unfreeze_from": unfreeze_from,
            "learning_rate": learning_rate,
            "fine_tune_learning_rate": fine_tune_learning_rate,
            "batch_size": batch_size,
            "image_size": image_size,
            "seed": seed,
            "classes": train_src.class_names,
            "model_kwargs": model_kwargs or {},
        }
        with runs.Run(output_dir, settings, MONITOR) as run:
            runs.say(verbose, runs.resume_line(run, total, lambda e: f"phase {1 if e < epochs else 2}"))
            keras.utils.set_random_seed(seed)
            drop = train_src.num_examples >= batch_size  # else each epoch is one smaller batch
            steps = data.batches_per_epoch(train_src.num_examples, batch_size, drop)

            def train(start_batch: int):  # the same batches, resumed or not
                return data.pipeline(
                    train_src,
                    batch_size,
                    True,
                    image_size,
                    augment=augment,
                    drop_remainder=drop,
                    seed=seed,
                    repeat=True,
                    start_batch=start_batch,
                )

            val = data.pipeline(val_src, batch_size, False, image_size)
            model, base = transfer_model(
                model_name, train_src.class_names, weights, image_size, **(model_kwargs or {})
            )

            def compile_(rate: float) -> None:
                metrics = training.metrics(1, train_src.num_classes)  # no top-5 of 5 classes or fewer
                model.compile(keras.optimizers.Adam(rate), "categorical_crossentropy", metrics=metrics)

            compile_(learning_rate)
            runs.fit(
                model,
                run,
                train,
                val,
                epochs,
                phase="head",
                steps_per_epoch=steps,
                verbose=verbose,
                label="phase 1",
            )
            if fine_tune_epochs:
                layers = unfreeze(base, unfreeze_from)
                compile_(fine_tune_learning_rate)
                if run.epoch < total:
                    runs.say(
                        verbose,
                        f"phase 2: unfreezing from {unfreeze_from} ({layers} layers with weights), "
                        f"{_epochs(fine_tune_epochs)} at learning rate {fine_tune_learning_rate:g}",
                    )
                runs.fit(
                    model,
                    run,
                    train,
                    val,
                    total,
                    phase="fine-tune",
                    initial_epoch=epochs,
                    steps_per_epoch=steps,
                    verbose=verbose,
                    label="phase 2",
                    rate_setting="fine_tune_learning_rate",
                )
            best_epoch, best = run.best
            return {
                "classes": train_src.class_names,
                "train_images": train_src.num_examples,
                "validation_images": val_src.num_examples,
                "skipped_files": skipped,
                "history": run.history,
                "best_epoch": best_epoch,
                "best": best,
                "best_model": run.path("best.keras"),
            }


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"
