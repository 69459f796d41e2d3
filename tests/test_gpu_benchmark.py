"""tools/gpu_benchmark.py (through tools/benchmark.py --device) on the CPU, tiny: a process per
case, the JSONL records as they finish, the table, the budget (speed is never asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOOL = os.path.join(ROOT, "tools", "gpu_benchmark.py")
TINY = ["--device", "cpu", "--models", "inception_v3", "--precisions", "float32", "--image-size", "75"]
TINY += ["--width", "0.25", "--depths", "1", "1", "1", "--batch", "2", "--train-batch", "2"]
TINY += ["--steps", "2", "--warmup", "1", "--peak-sizes", "128", "--peak-calls", "3"]


def harness(*args: str, tool: str = TOOL) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True, env=env, timeout=600)


def records(out_dir) -> list[dict]:
    with open(out_dir / "gpu_benchmark.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # 46 s on 2 busy cores: three processes, each importing Keras and PyTorch
@pytest.mark.skipif(not importlib.util.find_spec("torch"), reason="torch not installed")
def test_tiny_run_on_the_cpu_writes_records_and_table(tmp_path):
    timm = ["--timm", "eager"] if importlib.util.find_spec("timm") else ["--timm"]
    done = harness(
        *TINY, "--backend", "torch", "--torch-jit", "false", "--work", "inference", "--variants", "folded",
        *timm, "--out-dir", str(tmp_path), tool=os.path.join(ROOT, "tools", "benchmark.py"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run, *results = records(tmp_path)
    assert run["kind"] == "run" and run["device"] == "cpu" and run["versions"]["torch"]
    names = [r["name"] for r in results]
    expected = ["peak", "flops", "inference ours torch inception_v3 folded float32 eager batch 2"]
    if timm[1:]:
        expected.append("inference timm torch inception_v3 eager float32 batch 2")
    assert names == expected
    assert all(r["status"] == "ok" for r in results), results
    peak, flops, ours = results[:3]
    assert set(peak["peak"]) == {"bfloat16", "float32"} and peak["peak"]["float32"]["tflops"] > 0
    assert flops["gflop"]["inception_v3"] > 0
    assert ours["images_per_s"] >= ours["images_per_s_min"] > 0 and ours["steps"] == 2
    assert ours["precision_mode"] == "float32" and ours["memory"] == "peak RSS" and ours["peak_memory_gb"] > 0
    table = (tmp_path / "gpu_benchmark.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| inference | inception_v3 | ours |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:7] == ["Keras on torch", "inference form, jit_compile=False", "float32", "2"]
    assert cells[7] == f"{ours['images_per_s']:,.1f} ({ours['images_per_s_min']:,.1f})"
    assert cells[9].endswith("% of float32")
    assert "Measured matmul peak (torch, fastest call)" in table and "Not run" not in table
    assert f"Versions: keras {run['versions']['keras']}" in table
    for line in done.stdout.splitlines()[:-1]:
        assert line.startswith("[") and "/" in line.split("]")[0], line


def test_budget_skips_the_remaining_cases_and_the_table_is_rewritten(tmp_path):
    done = harness(*TINY, "--backend", "jax", "torch", "--budget-s", "0", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    run, *results = records(tmp_path)
    assert len(results) > 2 and {r["status"] for r in results} == {"skipped"}
    assert [r["kind"] for r in results[:3]] == ["peak", "flops", "inference"]
    assert f"budget spent: {len(results)} of {len(results)} cases skipped" in done.stdout
    table = (tmp_path / "gpu_benchmark.md").read_text()
    assert table.count("skipped, the run's budget of 0 s was spent") == len(results)
    (tmp_path / "gpu_benchmark.md").unlink()
    again = harness("--table-from", str(tmp_path / "gpu_benchmark.jsonl"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "gpu_benchmark.md").read_text() == table == again.stdout


def test_plan_puts_the_important_cases_first():
    import runpy

    tool = runpy.run_path(TOOL, run_name="gpu_benchmark")
    args = tool["parse"](["--backend", "jax", "torch", "--models", "inception_v3", "--timm", "eager"])
    names = [case.name for case in tool["plan"](args)]
    assert names[:6] == [
        "peak",
        "flops",
        "inference ours jax inception_v3 folded bfloat16 batch 256",
        "inference timm torch inception_v3 eager bfloat16 batch 256",
        "inference ours torch inception_v3 folded bfloat16 jit_compile batch 256",
        "inference ours torch inception_v3 folded bfloat16 eager batch 256",
    ]
    assert names[6:9] == [
        "train ours jax inception_v3 sgd bfloat16 batch 128",
        "train timm torch inception_v3 eager bfloat16 batch 128",
        "train ours torch inception_v3 sgd bfloat16 jit_compile batch 128",  # the first --torch-jit alone
    ]
    assert names.index("inference ours jax inception_v3 folded float32 batch 256") > names.index(
        "train ours torch inception_v3 recipe bfloat16 jit_compile batch 128"
    )  # every bfloat16 case before float32's
    assert len(names) == len(set(names))
