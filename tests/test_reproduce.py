"""tools/reproduce.py: the residual-death monitor of its residual-scaling runs."""

import importlib.util
import os
import sys

import numpy as np

import keras_inception as ki

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name: str):
    """A tools/ file as a module."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


reproduce = _load_tool("reproduce")


def test_residual_death_monitor_tells_lagging_statistics_from_dead_units():
    """The monitor reads the pre-pool zeros with the moving statistics and with the batch's own,
    leaves the moving statistics as they were, and stops training at a real death."""
    model = ki.InceptionResNetV2(
        weights=None, classes=3, width=0.25, depths=(1, 1, 1), input_shape=(75, 75, 3)
    )
    probe = np.random.default_rng(0).uniform(-1, 1, (4, 75, 75, 3)).astype("float32")
    bn = model.get_layer("Conv2d_7b_1x1-BatchNorm")

    def check(monitor):
        monitor.set_model(model)
        monitor.on_train_begin()
        before = [v.numpy().copy() for v in model.non_trainable_weights]
        monitor.on_train_batch_end(0, {"loss": 1.0})
        for old, v in zip(before, model.non_trainable_weights, strict=True):
            np.testing.assert_array_equal(old, v.numpy(), err_msg=v.path)
        return monitor.trace[-1][1], monitor.batch_trace[-1][1]

    bn.moving_mean.assign(np.full(bn.moving_mean.shape, 1e6, "float32"))  # statistics far behind the weights
    monitor = reproduce.ResidualDeathMonitor(probe, every=1)
    moving, batch = check(monitor)
    assert moving == 1.0 and batch < 0.9  # all zero only through the lagging statistics
    assert monitor.died_at is None and not getattr(model, "stop_training", False)

    bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
    bn.beta.assign(np.full(bn.beta.shape, -1e3, "float32"))  # every unit below zero whatever the statistics
    monitor = reproduce.ResidualDeathMonitor(probe, every=1)
    moving, batch = check(monitor)
    assert moving == batch == 1.0
    assert monitor.died_at == 1 and monitor.events[0][1] == "pre-pool features all zero"
    assert model.stop_training
