"""The benchmark and reproduction tools run end to end on tiny configurations (speed is never asserted)."""

import json
import os
import subprocess
import sys

import pytest

from keras_inception import cli

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_benchmark_runs_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench.md"
    code = cli.main(  # keras-inception benchmark runs tools/benchmark.py
        [
            "benchmark",
            "--models",
            "inception_v3",
            "--batch-sizes",
            "1",
            "--precisions",
            "float32",
            "mixed_bfloat16",
            "--xla",
            "off",
            "--repeats",
            "1",
            "--matmul-size",
            "256",
            "--image-size",
            "75",
            "--skip-deploy",
            "--train-batch-sizes",
            "--sizes",
            "--scaling-models",
            "--profile-models",
            "inception_v3",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    assert "| inception_v3 | Keras float32 | 1 |" in text
    assert "| inception_v3 | keras.applications float32 | 1 |" in text
    assert "### Ours against keras.applications" in text and "### mixed_bfloat16 against float32" in text
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["peak"]["float32"] > 0
    rows = {r["path"]: r for r in results["inference"]}
    assert rows["Keras mixed_bfloat16"]["cosine"] > 0.99  # same weights, lower precision
    assert all(r["min"] <= r["median"] <= r["max"] for r in results["inference"])
    parts = {r["part"]: r for r in results["profile"]}
    assert {"1x1 conv", "3x3 conv", "1x7 conv", "everything else"} <= set(parts)
    assert "## Where the time goes" in text


def test_reproduce_report_from_recorded_runs(tmp_path):
    """The report renders tables and plots from the run records the experiments write."""
    runs = tmp_path / "reproduction"
    for experiment, records in {
        "residual-speedup": [
            {
                "model": m,
                "seed": s,
                "depths": [1, 2, 1],
                "multiply_adds": 3e7,
                "parameters": 10,
                "steps": [10, 20],
                "wall_s": [1.0, 2.0],
                "loss": [2.0, 1.5],
                "top1_error": [80.0, 70.0 - s] if m == "inception_v3" else [75.0, 60.0 - s],
                "top5_error": [40.0, 30.0],
                "learning_rate": 0.045,
                "batch_size": 8,
                "image_size": 75,
                "width": 0.5,
            }
            for m in ("inception_v3", "inception_resnet_v1")
            for s in (0, 1)
        ],
        "residual-scaling": [
            {
                "model": "inception_resnet_v2",
                "seed": 0,
                "scale": sc,
                "depths": [1, 2, 2],
                "steps": [10],
                "wall_s": [1.0],
                "loss": [2.0],
                "top1_error": [80.0],
                "top5_error": [40.0],
                "learning_rate": 0.2,
                "batch_size": 8,
                "image_size": 75,
                "died_at": died,
                "events": [[died, "pre-pool features all zero", 1.0, 2.0]] if died else [],
                "zero_trace": [[10, 1.0 if died else 0.3]],
            }
            for sc, died in ((1.0, 10), (0.1, None))
        ],
    }.items():
        (runs / experiment).mkdir(parents=True)
        for i, record in enumerate(records):
            (runs / experiment / f"{i}.json").write_text(json.dumps(record))
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "reproduce.py"), "report", "--output", str(runs)],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    text = (tmp_path / "reproduction.md").read_text()
    assert "| v3 vs IRv1 | inception_resnet_v1 | 0.045 | (1, 2, 1) | 30.0 | 10 | 2 | 59.5 ± 0.5 |" in text
    assert "| 1.0 | 10 | pre-pool features all zero |" in text and "| 0.1 | did not die |" in text
    assert "agrees with the paper: unscaled residuals died, scaled ones trained" in text
    assert (
        "inception_v3 80.0% vs inception_resnet_v1 75.0% at step 10, 69.5% vs 59.5% at step 20 "
        "(mean of 2 and 2 seeds): this agrees with the paper" in text
    )
    assert (runs / "v3_vs_IRv1_lr0.045_top1_error_steps.png").exists()


@pytest.mark.slow
def test_reproduce_experiments_run_on_a_tiny_folder(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    out = tmp_path / "docs" / "reproduction"
    common = [
        "--data",
        str(folder),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--eval-images",
        "2",
        "--batch-size",
        "2",
        "--seeds",
        "0",
        "--output",
        str(out),
    ]
    tool = os.path.join(ROOT, "tools", "reproduce.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [sys.executable, tool, "residual-speedup", "--width", "0.25", *common], check=True, env=env
    )
    subprocess.run(
        [
            sys.executable,
            tool,
            "residual-scaling",
            "--scales",
            "1.0",
            "--wide-depths",
            "1",
            "1",
            "1",
            "--probe-every",
            "1",
            *common,
        ],
        check=True,
        env=env,
    )
    subprocess.run([sys.executable, tool, "report", "--output", str(out)], check=True, env=env)
    record = json.loads((out / "residual-speedup" / "inception_v4_lr0.045_seed0.json").read_text())
    assert record["steps"] == [1, 2] and len(record["top1_error"]) == 2
    scaling = json.loads((out / "residual-scaling" / "scale1.0.json").read_text())
    assert scaling["zero_trace"] and scaling["scale"] == 1.0
    assert "Residual scaling" in (tmp_path / "docs" / "reproduction.md").read_text()
