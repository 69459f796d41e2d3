"""slim's optimizer and learning-rate schedule as Keras objects (registered: models reload).

:class:`SlimRMSprop` is TF1's ``RMSPropOptimizer`` with slim's parameter moving
average (``ExponentialMovingAverage(decay, num_updates=global_step)``) kept as
optimizer variables; :class:`WarmupExponentialDecay` is slim's staircase decay
behind an optional linear warm-up.
"""

from __future__ import annotations

import types

import keras


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
        """The rate at ``step``, in float32 on every backend (as TensorFlow's Keras computes it)."""
        step = keras.ops.cast(step, "float32")
        initial = keras.ops.convert_to_tensor(self.initial, "float32")
        rate = keras.ops.convert_to_tensor(self.rate, "float32")
        decayed = initial * keras.ops.power(rate, keras.ops.floor(step / self.decay_steps))
        if not self.warmup_steps:
            return decayed
        warm = initial * (step + 1.0) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "initial": self.initial,
            "decay_steps": self.decay_steps,
            "rate": self.rate,
            "warmup_steps": self.warmup_steps,
        }


KERNEL_DTYPES = ("float16", "float32", "float64")  # ResourceApplyRMSProp's on every device


@keras.saving.register_keras_serializable(package="keras_inception")
class SlimRMSprop(keras.optimizers.Optimizer):
    """TF1's ``RMSPropOptimizer`` with slim's parameter moving average.

    ``ms = rho * ms + (1 - rho) * g^2`` (``ms`` starts at 1.0, as TF1's),
    ``mom = momentum * mom + lr * g / sqrt(ms + epsilon)``, ``w -= mom``. After each
    step, every variable given to :meth:`track_averages` moves its average by
    ``avg -= (1 - d) * (avg - w)`` with ``d = min(ema_decay, (1 + t) / (10 + t))``,
    ``t`` the steps taken so far (TF1's ``ExponentialMovingAverage(num_updates=)``).
    The averages are optimizer variables: checkpoints and resumes keep them (the
    averaged model variables are not: :attr:`averaged_variables`). On JAX the
    optimizer sees only the variables it trains: the averages of the others (BatchNorm's
    moving statistics) move in the model's step (``training.compile_model``). On
    TensorFlow, dense float16/32/64 steps run TF1's own kernel (:meth:`_apply_kernel`);
    the rest run the same formula in Keras ops (:meth:`_apply_ops`). TensorFlow is
    imported only on its backend.
    """

    def __init__(
        self,
        learning_rate=0.045,
        rho=0.9,
        momentum=0.9,
        epsilon=1.0,
        ema_decay=None,
        name="slim_rmsprop",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho, self.momentum, self.epsilon, self.ema_decay = rho, momentum, epsilon, ema_decay
        # not a list attribute: Keras would make the model's variables the optimizer's own, and a
        # JAX step would then put back their values from before it (the moving statistics never moved)
        self._averaged = types.SimpleNamespace(variables=[])
        self.averages: list = []

    @property
    def averaged_variables(self) -> list:
        """The model variables whose averages :attr:`averages` holds, in the same order."""
        return self._averaged.variables

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._mean_squares = self.add_optimizer_variables(var_list, "rms", initializer="ones")
        self._moments = self.add_optimizer_variables(var_list, "momentum")

    def track_averages(self, variables) -> None:
        """Keep moving averages of ``variables`` (a model's weights), starting at their values."""
        if self.ema_decay is None:
            return
        for variable in variables:
            if "float" not in str(variable.dtype):
                continue
            average = self.add_variable_from_reference(variable, "average")
            average.assign(keras.ops.copy(variable))  # JAX: its own buffer (a step donates both)
            self.averaged_variables.append(variable)
            self.averages.append(average)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        ms, mom = self._mean_squares[index], self._moments[index]
        if (
            keras.backend.backend() == "tensorflow"
            and not _is_sparse(gradient)
            and keras.backend.standardize_dtype(variable.dtype) in KERNEL_DTYPES
        ):
            self._apply_kernel(gradient, variable, ms, mom, learning_rate)
        else:
            self._apply_ops(gradient, variable, ms, mom, learning_rate)

    def _apply_ops(self, gradient, variable, ms, mom, learning_rate) -> None:
        """The step in Keras ops: any backend, sparse gradients (every row updated) and
        variable dtypes the kernel lacks on some device (bfloat16 on a GPU)."""
        lr = keras.ops.cast(learning_rate, variable.dtype)
        gradient = keras.ops.cast(gradient, variable.dtype)
        self.assign(ms, self.rho * ms + (1.0 - self.rho) * keras.ops.square(gradient))
        self.assign(mom, self.momentum * mom + lr * gradient / keras.ops.sqrt(ms + self.epsilon))
        self.assign_sub(variable, mom)

    def _apply_kernel(self, gradient, variable, ms, mom, learning_rate) -> None:
        """The step as TF1's ``RMSPropOptimizer`` runs it: one ``ResourceApplyRMSProp`` per
        variable, where Keras's ops take about twenty, each with a temporary as large as the
        variable (docs/training.md; docs/profile-training.md has the step's time per op). Under
        ``tf.distribute`` the handles are the replica's own copies: Keras calls this inside
        ``strategy.extended.update``."""
        import tensorflow as tf

        def cast(value):
            return tf.cast(value, variable.dtype)

        tf.raw_ops.ResourceApplyRMSProp(
            var=variable.handle,
            ms=ms.handle,
            mom=mom.handle,
            lr=cast(learning_rate),
            rho=cast(self.rho),
            momentum=cast(self.momentum),
            epsilon=cast(self.epsilon),
            grad=cast(gradient),
        )

    def apply(self, grads, trainable_variables=None):
        super().apply(grads, trainable_variables)
        if self.averages:
            self._update_averages()

    def moved(self, average, value, iterations):
        """``average`` moved towards ``value`` after ``iterations`` steps (slim's warm-up decay)."""
        t = keras.ops.cast(iterations, "float32")
        rate = 1.0 - keras.ops.minimum(self.ema_decay, (1.0 + t) / (10.0 + t))
        return average - keras.ops.cast(rate, average.dtype) * (average - value)

    def _update_averages(self) -> None:
        steps = keras.ops.cast(self.iterations, "float32")  # read here: in a replica context

        def move(average, variable):
            average.assign(self.moved(average, variable, steps))

        pairs = list(zip(self.averages, self.averaged_variables, strict=True))
        if keras.backend.backend() == "jax":  # the variables it trains: the others are not in its scope
            trained = {id(v) for v in self._trainable_variables}
            pairs = [(a, v) for a, v in pairs if id(v) in trained]
        tf = _tensorflow_if_distributed()
        if tf is not None:

            def merged(strategy):  # under strategy.run: update every replica's copy once
                for average, variable in pairs:  # the tf.Variables behind the Keras ones
                    strategy.extended.update(average.value, move, args=(variable.value,), group=False)

            tf.distribute.get_replica_context().merge_call(merged)
        else:
            for average, variable in pairs:
                move(average, variable)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "ema_decay": self.ema_decay,
        }


def _is_sparse(gradient) -> bool:
    """A ``tf.IndexedSlices`` gradient (TensorFlow's sparse rows; asked on its backend only)."""
    import tensorflow as tf

    return isinstance(gradient, tf.IndexedSlices)


def _tensorflow_if_distributed():
    """``tensorflow`` inside a ``tf.distribute`` replica context, else ``None``."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        return tf
    return None
