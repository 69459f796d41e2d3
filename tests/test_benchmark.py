"""The benchmark and reproduction tools run end to end on tiny configurations (speed is never asserted)."""

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

from keras_inception.core import cpu

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow  # 34 s; the default run keeps the tool's peak, report and --residual-scale tests
def test_benchmark_runs_a_tiny_configuration(tmp_path):
    out = tmp_path / "bench.md"
    code = _load_tool("benchmark").main(
        [
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
            "--peak-sizes",
            "512",
            "--peak-seconds",
            "0.2",
            "--image-size",
            "75",
            "--skip-deploy",
            "--peers",
            "keras.applications",
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
    assert "## Ours against peers" in text and "### mixed_bfloat16 against float32" in text
    results = json.loads((tmp_path / "bench.json").read_text())
    peak = results["peak"]
    assert (peak["cpu"], peak["flags"]) == (cpu.current().model, cpu.current().relevant_flags())
    assert f": {cpu.current().describe()}, {os.cpu_count()} cores" in text  # the CPU and its flags head it
    libraries = {"numpy", "tf"} | ({"openvino"} if importlib.util.find_spec("openvino") else set())
    assert {(r["library"], r["size"]) for r in peak["rows"]["float32"]} == {(lib, 512) for lib in libraries}
    assert peak["float32"] == max(r["gflops"] for r in peak["rows"]["float32"]) > 0
    assert "exceeded" not in peak  # no row above the peak of its precision
    assert all(r["best_gflops"] <= peak[r["precision"]] for r in results["inference"])
    rows = {r["path"]: r for r in results["inference"]}
    assert rows["Keras mixed_bfloat16"]["cosine"] > 0.99  # same weights, lower precision
    assert rows["Keras float32 folded"]["cosine"] > 0.999999  # the inference form: same function
    assert "### BatchNorm folded (the inference form) against the model as built" in text
    assert all(r["min"] <= r["median"] <= r["max"] for r in results["inference"])
    parts = {r["part"]: r for r in results["profile"]}
    assert {"1x1 conv", "3x3 conv", "1x7 conv", "everything else"} <= set(parts)
    assert "## Where the time goes" in text


def test_benchmark_times_the_other_residual_form(tmp_path, monkeypatch):
    """--residual-scale: Inception-ResNet's folded form at batch 1 with the residual scale the other
    way than predict runs it (kept apart under an AVX2 cap, so: folded), the same function."""
    from keras_inception.deploy import folding

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setattr(
        folding, "tensorflow_onednn", lambda: True
    )  # as on this kind of machine (cap or AVX-VNNI)
    cpu.current.cache_clear()
    monkeypatch.setattr(cpu, "_warned", set())
    try:
        assert not folding.residual_scale_folds(1)  # capped at AVX2 (or an AVX2 CPU): kept apart at batch 1
        capped = bool(cpu.current().isa_cap)  # not on a CPU that has nothing above AVX2
        out = tmp_path / "bench.md"
        options = (
            "--models inception_resnet_v2 --width 0.25 --depths 1 1 1 --batch-sizes 1 --precisions float32"
        )
        peak = tmp_path / "peak.json"  # a recorded peak: no peak processes to start
        peak.write_text(
            json.dumps({"float32": {"gflops": 1e6, "rows": [{"library": "tf", "size": 128, "gflops": 1e6}]}})
        )
        options += f" --xla off --repeats 1 --peak {peak} --image-size 75 --skip-deploy"
        options += " --peers --train-batch-sizes --sizes --scaling-models --profile-models --residual-scale"
        with mock.patch.dict(os.environ):  # the tool sets the cap's OpenBLAS and ATen variables
            assert _load_tool("benchmark").main([*options.split(), "--output", str(out)]) == 0
    finally:
        cpu.current.cache_clear()
    rows = {r["path"]: r for r in json.loads((tmp_path / "bench.json").read_text())["inference"]}
    assert set(rows) == {"Keras float32", "Keras float32 folded", "Keras float32 folded, scale folded"}
    assert rows["Keras float32 folded, scale folded"]["cosine"] > 0.999999
    assert ("capped at AVX2 by ONEDNN_MAX_CPU_ISA" in out.read_text()) == capped


@pytest.mark.slow  # two training processes (about 50 s on 2 cores); the tiny run above trains once
def test_benchmark_training_alone_in_rounds(tmp_path):
    """--batch-sizes with no value: no inference rows or sections; a training case in 2 rounds."""
    out = tmp_path / "train.md"
    options = "--models inception_v3 --width 0.25 --depths 1 1 1 --image-size 75 --batch-sizes"
    options += " --repeats 1 --peak-sizes 128 --peak-seconds 0.1 --peers --train-batch-sizes 2"
    options += " --train-precisions float32 --train-rounds 2"
    options += " --sizes --scaling-models --profile-models"
    assert _load_tool("benchmark").main([*options.split(), "--output", str(out)]) == 0
    text = out.read_text()
    results = json.loads((tmp_path / "train.json").read_text())
    assert results["inference"] == [] and "## Inference" not in text and "ours/peer above 1" not in text
    (row,) = results["training"]
    assert (row["who"], row["precision"], row["rounds"]) == ("ours", "float32", 2)
    assert row["min"] <= row["median"] <= row["max"] and 0 < row["built_rss_gb"] <= row["peak_rss_gb"]
    assert "| inception_v3 | ours | float32 | 2 |" in text


def _load_tool(name: str):
    """A tools/ file as a module (its functions see attributes patched on it)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_peak_theory_by_cpu_flags():
    """FLOP per cycle per core as tools/peak.py assumes them (its measurement runs in the tiny benchmark)."""
    peak = _load_tool("peak")
    zen4 = frozenset({"avx2", "fma", "avx512f", "avx512_bf16"})
    amx = zen4 | {"amx_bf16"}
    assert peak.flop_per_cycle(zen4, vendor_amd=True) == {"float32": 32, "bfloat16": 64}
    assert peak.flop_per_cycle(amx, vendor_amd=False) == {"float32": 64, "bfloat16": 1024}
    assert peak.flop_per_cycle(frozenset({"avx2", "fma"}), vendor_amd=True) == {"float32": 32, "bfloat16": 32}
    theory = peak.theoretical(2, 2500.0, zen4, True)
    assert (theory["float32"], theory["bfloat16"]) == (160.0, 320.0)


X86_64 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform in ("linux", "darwin")


@pytest.mark.skipif(not X86_64, reason="the clock's chains are x86-64 machine code")
def test_the_clock_is_measured_by_dependent_chains():
    """The chains compute what they say, and the clock they give is a clock: a chain of
    add-immediates, which some cores fold at rename, gave 21 GHz on the model-167 Xeon."""
    peak = _load_tool("peak")
    for name, (link, _) in peak.CHAINS.items():
        f, memory = peak.chain(link)
        assert f(3) == (3 * 3 * peak.LINKS if name == "add" else 0)  # rcx = n, added n x LINKS times
        memory.close()
    assert all(300 < mhz < 7000 for mhz in peak.chain_mhz(1, 0.06).values())  # each chain a clock
    for _ in range(5):  # CI's other worker can start AVX-512 code mid-measurement: the chains then
        mhz, source = peak.clock(2, seconds=0.15)  # disagree, and clock says so (the test below)
        if "disagree" not in source:
            break
    assert source == "measured: dependent adds and multiplies on 2 cores at once"
    assert 300 < mhz < 7000


def test_the_clock_falls_back_to_cpuinfo_and_says_why(monkeypatch):
    peak = _load_tool("peak")
    monkeypatch.setattr(peak, "cpuinfo_mhz", lambda: 2600.0)
    monkeypatch.setattr(peak.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(peak.sys, "platform", "linux")
    answers = iter([(-11, ""), (0, '{"add": 9000.0, "imul": 3000.0}\n')])

    def run(command, **kwargs):
        code, out = next(answers)
        return subprocess.CompletedProcess(command, code, out, "")

    monkeypatch.setattr(peak.subprocess, "run", run)
    assert peak.clock(2) == (2600.0, "/proc/cpuinfo; the measurement failed (signal 11)")
    assert peak.clock(2) == (2600.0, "/proc/cpuinfo; the measured chains disagree (add 9000, imul 3000 MHz)")
    monkeypatch.setattr(peak.platform, "machine", lambda: "aarch64")
    assert peak.clock(2) == (2600.0, "/proc/cpuinfo; not measured on aarch64 linux")
    benchmark = _load_tool("benchmark")
    rows = {"float32": [{"library": "tf", "size": 1024, "gflops": 120.0}]}
    for source, said in [
        ("/proc/cpuinfo; not measured on aarch64 linux", "a core that boosts above the reported clock"),
        ("measured: dependent adds and multiplies on 2 cores at once", "an upper bound: a core may run"),
    ]:
        theory = peak.theoretical(2, 2000.0, frozenset({"avx2", "fma"}), True, source)
        (line,) = benchmark.peak_lines({"float32": 120.0, "rows": rows, "theoretical": theory})
        assert (
            f"Theoretical at 2000 MHz ({source}) x 2 cores: float32 128.0 GFLOP/s (32 FLOP/cycle/core; "
            "measured: 94%)"
            in line
            and said in line
        )


def test_peak_under_an_isa_cap_leaves_bfloat16_out_and_says_why():
    """TensorFlow's bfloat16 matmul aborts under ONEDNN_MAX_CPU_ISA below the bfloat16 units."""
    peak = _load_tool("peak")
    amx = cpu.CPU("Xeon", frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}))
    assert peak.measurable(amx) == (("float32", "bfloat16"), None)
    assert peak.measurable(amx.capped("AVX512_CORE_BF16")) == (("float32", "bfloat16"), None)
    assert peak.measurable(amx.capped("AVX2")) == (
        ("float32",),
        "bfloat16 not measured: under ONEDNN_MAX_CPU_ISA=AVX2 TensorFlow's bfloat16 matmul aborts "
        "(the cap hides the CPU's bfloat16 units from oneDNN, not from TensorFlow)",
    )
    benchmark = _load_tool("benchmark")
    theory = {"flop_per_cycle_per_core": {"float32": 32, "bfloat16": 32}, "cores": 2, "mhz": 2000.0}
    theory |= {"float32": 128.0, "bfloat16": 128.0}
    rows = {"float32": [{"library": "tf", "size": 1024, "gflops": 120.0}]}
    (line,) = benchmark.peak_lines({"float32": 120.0, "rows": rows, "theoretical": theory})
    assert (
        "float32 120.0 GFLOP/s (tf 1024x1024); the fastest call" in line
        and "bfloat16" not in line.split("Theoretical")[1]
    )
    assert "at least twice" not in line  # the bfloat16 sentence only with a bfloat16 peak
    peak = {"float32": 120.0, "rows": rows, "theoretical": theory, "remeasured": True}
    (again,) = benchmark.peak_lines(peak)
    assert again.endswith("Measured again after a row beat the first measurement; no row beats this one.")


def test_openvino_bfloat16_is_timed_only_with_bfloat16_units():
    """Without them OpenVINO runs a bfloat16 model in float32; under oneDNN's cap it fails to compile."""
    benchmark = _load_tool("benchmark")
    amx = cpu.CPU("Xeon", frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}))
    assert benchmark.openvino_precisions(amx) == (["float32", "bfloat16", "int8"], None)
    assert benchmark.openvino_precisions(amx.capped("AVX2")) == (
        ["float32", "int8"],
        "OpenVINO bfloat16: this CPU has no bfloat16 units (OpenVINO would run float32)",
    )


def test_a_failed_peak_worker_is_named_in_one_line():
    peak = _load_tool("peak")
    with pytest.raises(SystemExit) as failed:
        peak.measure([-1], 0.1, ("float32",))
    assert str(failed.value) == (
        "peak.py: the numpy float32 -1x-1 worker failed (exit 1): "
        "ValueError: negative dimensions are not allowed"
    )


def test_vector_bfloat16_is_at_least_twice_float32_without_amx():
    """On AVX512_BF16 without AMX the bfloat16 limit is max(its GEMM, 2 x float32's); with AMX
    or without AVX512_BF16 it is the bfloat16 GEMM measured; the report says which."""
    peak = _load_tool("peak")
    benchmark = _load_tool("benchmark")

    def measured() -> dict:
        return {
            "float32": {"gflops": 220.0, "rows": [{"library": "tf", "size": 2048, "gflops": 220.0}]},
            "bfloat16": {"gflops": 410.0, "rows": [{"library": "openvino", "size": 1024, "gflops": 410.0}]},
        }

    zen4 = measured()
    peak.vector_bfloat16(zen4, frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    assert zen4["bfloat16"]["gflops"] == zen4["bfloat16"]["from_float32"] == 440.0
    for flags in ({"avx512_bf16", "amx_bf16"}, {"avx2", "fma"}):
        other = measured()
        peak.vector_bfloat16(other, frozenset(flags))
        assert other["bfloat16"]["gflops"] == 410.0 and "from_float32" not in other["bfloat16"]
    theory = {"flop_per_cycle_per_core": {"float32": 32, "bfloat16": 64}, "cores": 2, "mhz": None}
    report = {**{p: m["gflops"] for p, m in zen4.items()}, "rows": {p: m["rows"] for p, m in zen4.items()}}
    (line,) = benchmark.peak_lines({**report, "theoretical": theory})
    assert line.startswith(
        "Machine limit (tools/peak.py): float32 220.0 GFLOP/s (tf 2048x2048), bfloat16 440.0 GFLOP/s "
        "(twice the float32 peak; its best matmul 410.0, openvino); the fastest call of n x n matmuls, "
        "n in 1024, 2048, each size in its own process (float32 through tf; bfloat16 through openvino);"
    )


@pytest.mark.parametrize("measured", [("float32", "bfloat16"), ("float32",)], ids=["both", "capped"])
def test_a_row_above_the_peak_remeasures_it_then_is_flagged(tmp_path, monkeypatch, measured):
    """No share above 100%: a row faster than the peak makes the tool measure the peak again,
    and if the row still beats it, the report says so and the run fails. Under an ISA cap the
    peak has float32 alone (tools/peak.py's measurable)."""
    benchmark = _load_tool("benchmark")
    peaks = []

    def machine_peak(args):
        peaks.append(len(peaks))
        rows = {p: [{"library": "tf", "size": 64, "gflops": 10.0}] for p in measured}
        theory = {"flop_per_cycle_per_core": {"float32": 32, "bfloat16": 64}, "cores": 2, "mhz": 2500.0}
        return {**{p: 10.0 for p in measured}, "rows": rows, "theoretical": {**theory, "float32": 160.0,
                "bfloat16": 320.0}}  # fmt: skip

    def inference_rows(args, name, skipped):
        row = {"model": name, "peer": "", "batch": 1, "median": 1.0, "min": 1.0, "max": 1.0, "cosine": 1.0}
        return [
            {**row, "path": "Keras float32", "precision": "float32", "gflops": 9.0, "best_gflops": 11.0},
            {**row, "path": "LiteRT int8", "precision": "int8", "gflops": 50.0, "best_gflops": 50.0},
        ]

    monkeypatch.setattr(benchmark, "machine_peak", machine_peak)
    monkeypatch.setattr(benchmark, "inference_rows", inference_rows)
    monkeypatch.setattr(benchmark, "training_rows", lambda args, name, skipped: [])
    out = tmp_path / "bench.md"
    options = "--models inception_v3 --precisions float32 --profile-models --scaling-models --skip-deploy"
    assert benchmark.main([*options.split(), "--output", str(out)]) == 1
    assert peaks == [0, 1]  # measured again once
    text = out.read_text()
    assert "measured again after them: inception_v3 Keras float32 batch 1." in text
    assert "| inception_v3 | LiteRT int8 | 1 | 1.00 (1.00-1.00) | 50.0 | - |" in text  # int8: no share
    theory = "x 2 cores: float32 160.0 GFLOP/s (32 FLOP/cycle/core; measured: 6%)"
    assert theory + (", bfloat16 320.0" if "bfloat16" in measured else " (FLOP/cycle as") in text

    # a long run split: --append keeps the other models' rows and the recorded peak
    options = options.replace("inception_v3", "inception_v4")
    assert benchmark.main(["--append", *options.split(), "--output", str(out)]) == 1
    assert peaks == [0, 1, 2]  # only the re-measure: the first peak came from the file
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["model"] for r in results["inference"]] == ["inception_v3"] * 2 + ["inception_v4"] * 2


def _record(experiment: str, model: str, seed: int, top1: list[float], **extra) -> dict:
    """A run record as tools/reproduce.py writes it (every field the report reads)."""
    steps = [10 * (i + 1) for i in range(len(top1))]
    return {
        "experiment": experiment,
        "model": model,
        "seed": seed,
        "width": 0.5,
        "depths": [1, 2, 1],
        "multiply_adds": 3e7,
        "parameters": 10,
        "steps": steps,
        "wall_s": [1.0 * s for s in steps],
        "cpu_s": [1.5 * s for s in steps],
        "load_average": [2.0 for _ in steps],
        "loss": [2.0 - 0.1 * i for i in range(len(top1))],
        "top1_error": top1,
        "learning_rate": 0.045,
        "batch_size": 8,
        "image_size": 75,
        "bn_momentum": 0.99,
        "augmentation": "flip",
        "train_examples": 900,
        "classes": 10,
        "eval_images": 100,
        "recipe": {
            "learning_rate": 0.045, "decay_rate": 0.94, "decay_epochs": 2.0, "rho": 0.9, "momentum": 0.9,
            "epsilon": 1.0, "weight_decay": 4e-05, "weight_decay_mode": "l2", "label_smoothing": 0.1,
            "aux_weight": 0.4, "ema_decay": None, "clipnorm": None, "warmup_epochs": 0.0,
        },
        "args": {"data": "/data/cifar10.tar.gz", "steps": steps[-1], "eval_every": 10, "probe_every": 5},
        "package_version": "0.1.0",
        "commit": "0123456789abcdef",
        "machine": {"cpu": "Test CPU", "cores": 2, "tensorflow": "2.x", "keras": "3.x"},
        **extra,
    }  # fmt: skip


def _write_records(runs, records: dict) -> None:
    for experiment, items in records.items():
        (runs / experiment).mkdir(parents=True)
        for i, record in enumerate(items):
            (runs / experiment / f"{i}.json").write_text(json.dumps(record))


def _report(runs) -> str:
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "reproduce.py"), "report", "--output", str(runs)],
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return (runs.parent / "reproduction.md").read_text()


def test_reproduce_report_from_recorded_runs(tmp_path):
    """Tables, verdicts and plots come from the records; verdicts go only as far as the seeds agree."""
    runs = tmp_path / "reproduction"
    speed = [
        _record("residual-speedup", m, s, top1, depths=d, pair_mismatch=0.01 if m != "inception_v3" else 0.0)
        for m, d, top1 in (
            ("inception_v3", [2, 2, 1], [80.0, 70.0]),
            ("inception_resnet_v1", [1, 2, 1], [75.0, 60.0]),
        )
        for s, top1 in ((0, [t + 0 for t in top1]), (1, [t + 4 for t in top1]), (2, [t + 2 for t in top1]))
    ]
    scaling = [
        _record(
            "residual-scaling", "inception_resnet_v2", seed, [90.0, error], scale=scale, died_at=died,
            events=[[died, "pre-pool features all zero", 1.0, 2.0]] if died else [],
            zero_trace=[[5, 0.9], [10, 0.95]], batch_stat_zero_trace=[[5, 0.4], [10, 0.5]],
            depths=[1, 2, 2], width=1.0,
        )
        for scale, died, errors in ((1.0, 10, (91.0, 92.0, 95.0)), (0.1, None, (50.0, 60.0, 55.0)))
        for seed, error in enumerate(errors)
    ]  # fmt: skip
    _write_records(runs, {"residual-speedup": speed, "residual-scaling": scaling})
    text = _report(runs)
    assert (
        "| v3 vs IRv1 | inception_resnet_v1 | (1, 2, 1) | 30.0 | +1.00% | 10 | 3 | 62.0 (60.0-64.0) "
        "| 62.0 (60.0-64.0) | 20 (20-20) | 30 (30-30) |" in text
    )
    assert "| v3 vs IRv1 | inception_v3 | (2, 2, 1) | 30.0 | - | 10 | 3 | 72.0 (70.0-74.0) |" in text
    assert "Final error 62.0 (60.0-64.0)% against 72.0 (70.0-74.0)% (3 and 3 seeds)" in text
    assert "this agrees with the paper in direction" in text
    assert "weight decay 4e-05 (l2)" in text and "Seeds 0, 1, 2" in text and "Test CPU, 2 cores" in text
    assert "top5" not in text.lower().replace("top-5 error is not reported", "")
    assert "| 1.0 | 3 | seed 0: step 10, pre-pool features all zero, seed 1: step 10" in text
    assert "| 0.1 | 3 | none | 55.0 (50.0-60.0) | 3 of 3 |" in text
    assert "Lowest mean final error: scale 0.1 (55.0 (50.0-60.0)%); every one of its seeds ends below" in text
    assert "Scale 1.0: 3 of 3 seeds end at or above chance (90.0%)" in text
    assert "More unscaled seeds died than scaled ones: the direction of the paper's effect." in text
    assert "the zeros come mostly from BatchNorm's moving statistics lagging" in text
    assert (runs / "v3_vs_IRv1_top1_error_steps.png").exists()

    overlapping = [dict(r, top1_error=[70.0, 65.0 + r["seed"] * 5]) for r in speed]  # seeds' ranges overlap
    runs2 = tmp_path / "other" / "reproduction"
    _write_records(runs2, {"residual-speedup": overlapping})
    assert "does not agree with the paper" in _report(runs2) or "seeds' final errors overlap" in _report(
        runs2
    )


NUMBER = re.compile(r"(?<![A-Za-z_\-.\d])[-+]?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?")


def _figures(records: list[dict]) -> set[str]:
    """Every number the records hold or that the report may compute from them, as it may be printed."""
    values: list[float] = []

    def walk(v):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            values.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            values.append(len(v))
            for x in v:
                walk(x)

    for r in records:
        walk(r)
        values += [100 * r.get("pair_mismatch", 0), r["multiply_adds"] / 1e6]
        if "classes" in r:
            values.append(100 * (1 - 1 / r["classes"]))
    groups: dict = {}
    for r in records:
        groups.setdefault((r["experiment"], r["model"], r.get("scale")), []).append(r)
    values += list(range(max(len(g) for g in groups.values()) + 1))  # counts of seeds
    for group in [*groups.values(), records]:
        for key in ("top1_error", "loss", "wall_s", "cpu_s", "zero_trace", "batch_stat_zero_trace"):
            series = [[p[1] if isinstance(p, list) else p for p in r.get(key, [])] for r in group]
            series = [s for s in series if s]
            if not series:
                continue
            n = min(len(s) for s in series)
            for column in [
                *[[s[i] for s in series] for i in range(n)],
                [max(s) for s in series],
                [min(s) for s in series],
                [s[-1] for s in series],
            ]:
                values += [float(np.mean(column)), min(column), max(column)]
        for key in ("zero_trace", "batch_stat_zero_trace"):  # over all runs of an experiment
            peaks = [max(p[1] for p in r[key]) for r in group if r.get(key)]
            if peaks:
                values += [float(np.mean(peaks)), min(peaks), max(peaks)]
    out = set()
    for v in values:
        for digits in range(4):
            out.add(f"{v:.{digits}f}")
            out.add(f"{v:+.{digits}f}")
        out.add(f"{v:g}")
        if float(v).is_integer():
            out.add(f"{int(v):,}")
    return out


def _strings(value) -> set[str]:
    if isinstance(value, str):
        return {value} if len(value) >= 3 else set()
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*(_strings(v) for v in items)) if items else set()


def test_reproduction_report_says_only_what_its_records_hold(tmp_path):
    """docs/reproduction.md is exactly what its committed records produce, and every figure in its prose
    (outside tables and image links) is a number the records hold or one computed from them."""
    docs = os.path.join(ROOT, "docs")
    records = []
    runs = tmp_path / "reproduction"
    for experiment in ("residual-speedup", "residual-scaling"):
        folder = os.path.join(docs, "reproduction", experiment)
        if os.path.isdir(folder):
            shutil.copytree(folder, runs / experiment)
            records += [json.loads((runs / experiment / f).read_text()) for f in sorted(os.listdir(folder))]
    assert records, "docs/reproduction holds no run records"
    with open(os.path.join(docs, "reproduction.md")) as f:
        committed = f.read()
    assert _report(runs) == committed
    figures = _figures(records)
    prose = [ln for ln in committed.splitlines() if ln and not ln.startswith(("|", "![", "#"))]
    text = "\n".join(prose)
    for quoted in sorted(_strings(records), key=len, reverse=True):  # versions, CPU name: quoted as recorded
        text = text.replace(quoted, " ")
    text = re.sub(r"(?i)top-[15]|\(paper [^)]*\)|one-minute|`[^`]*`", " ", text)
    unexplained = sorted({n.rstrip(",") for n in NUMBER.findall(text)} - figures)
    assert not unexplained, f"figures in docs/reproduction.md that no record holds: {unexplained}"


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
    scaling = json.loads((out / "residual-scaling" / "scale1.0_seed0.json").read_text())
    assert scaling["zero_trace"] and scaling["scale"] == 1.0
    assert "Residual scaling" in (tmp_path / "docs" / "reproduction.md").read_text()


def test_benchmark_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as done:
        _load_tool("benchmark").main(["--help"])
    assert done.value.code == 0
    assert "--peak-sizes" in capsys.readouterr().out
