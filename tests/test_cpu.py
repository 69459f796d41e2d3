"""CPU detection and the default precision it gives, on faked /proc/cpuinfo files."""

import os
import subprocess
import sys
import warnings

import pytest

from keras_inception.core import cpu

BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c"
INTEL_AMX = (
    "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    "GenuineIntel",
    f"{BASE} fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
)
AMD_ZEN4 = ("AMD EPYC 9R14", "AuthenticAMD", f"{BASE} fma avx2 avx512f avx512_bf16 avx512_vnni")
AVX2_ONLY = ("AMD EPYC 7B13", "AuthenticAMD", f"{BASE} fma avx2")


def cpuinfo(model: str, vendor: str, flags: str) -> str:
    core = f"processor\t: {{}}\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
    core += f"cpu MHz\t\t: 2596.1\nflags\t\t: {flags}\n"
    return "\n".join(core.format(i) for i in range(2))


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Makes ``cpu.current()`` read a fake cpuinfo file (as KERAS_INCEPTION_CPUINFO names it)."""

    def use(model: str, vendor: str, flags: str) -> cpu.CPU:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo(model, vendor, flags))
        monkeypatch.setenv("KERAS_INCEPTION_CPUINFO", str(path))
        for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(cpu, "_warned", set())
        cpu.current.cache_clear()
        return cpu.current()

    yield use
    cpu.current.cache_clear()


@pytest.mark.parametrize(
    "spec, unit, precision, flags",
    [
        (INTEL_AMX, "AMX", "bfloat16", "avx2 fma avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8"),
        (AMD_ZEN4, "AVX512_BF16", "bfloat16", "avx2 fma avx512f avx512_bf16 avx512_vnni"),
        (AVX2_ONLY, None, "float32", "avx2 fma"),
    ],
)
def test_detection_and_default(machine, spec, unit, precision, flags):
    found = machine(*spec)
    assert (found.model, found.vendor) == spec[:2]
    assert found.bfloat16 == unit
    assert " ".join(found.relevant_flags()) == flags
    assert found.describe() == f"{spec[0]} ({flags})"
    assert cpu.default_precision() == precision
    assert cpu.default_policy() == {"bfloat16": "mixed_bfloat16"}.get(precision, "float32")


def test_bfloat16_warns_once_where_it_is_emulated(machine):
    machine(*AVX2_ONLY)
    with pytest.warns(UserWarning) as caught:
        assert cpu.check_precision("mixed_bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu.check_precision("bfloat16")  # once per process
    assert [str(w.message) for w in caught] == [
        "bfloat16 on AMD EPYC 7B13: no bfloat16 hardware (AMX, AVX512_BF16, Arm BF16), so it is emulated "
        "and slower than float32; use float32 on this CPU"
    ]


@pytest.mark.parametrize("spec", [INTEL_AMX, AMD_ZEN4])
def test_no_warning_for_float32_or_bfloat16_hardware(machine, spec):
    machine(*AVX2_ONLY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu.check_precision("float32")
        machine(*spec)
        assert not cpu.check_precision("mixed_bfloat16")


def test_arm_bf16_and_unreadable_cpuinfo(tmp_path, monkeypatch):
    arm = cpu.parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n")
    assert (arm.model, arm.bfloat16, arm.relevant_flags()) == ("0xd40", "Arm BF16", ["asimd", "bf16", "i8mm"])
    monkeypatch.setenv("KERAS_INCEPTION_CPUINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(cpu.platform, "system", lambda: "Plan9")
    cpu.current.cache_clear()
    try:
        assert cpu.current().flags == frozenset() and cpu.default_precision() == "float32"
    finally:
        cpu.current.cache_clear()


def test_predict_warns_for_a_bfloat16_model_on_a_cpu_without_it(machine):
    import keras

    from keras_inception.deploy import predict

    machine(*AVX2_ONLY)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(2)])
    finally:
        keras.config.set_dtype_policy("float32")
    with pytest.warns(UserWarning, match="^bfloat16 on AMD EPYC 7B13: no bfloat16 hardware"):
        assert predict.classify(model, []) == ([], [])


@pytest.mark.parametrize(
    "variable, level, unit, flags",
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX2", None, "avx2 fma"),
        ("DNNL_MAX_CPU_ISA", "avx512_core_vnni", None, "avx2 fma avx512f avx512_vnni"),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", "AVX512_BF16", "avx2 fma avx512f avx512_bf16 avx512_vnni"),
    ],
)
def test_onednn_isa_cap_gives_an_older_cpus_flags_and_default(
    machine, monkeypatch, variable, level, unit, flags
):
    machine(*INTEL_AMX)
    monkeypatch.setenv(variable, level)
    cpu.current.cache_clear()
    found = cpu.current()
    assert (found.bfloat16, " ".join(found.relevant_flags())) == (unit, flags)
    assert (
        found.describe()
        == f"{INTEL_AMX[0]} ({flags}), instruction set capped at {level.upper()} by {variable}"
    )
    assert cpu.default_precision() == ("bfloat16" if unit else "float32")
    if unit is None:
        with pytest.warns(UserWarning, match="no bfloat16 hardware"):
            cpu.check_precision("mixed_bfloat16")


@pytest.mark.parametrize("level", ["ALL", "DEFAULT", "AVX10_1_512_AMX", "AVX512_CORE_AMX", "NO_SUCH_ISA"])
def test_a_cap_that_removes_nothing_leaves_the_cpu_as_it_is(machine, monkeypatch, level):
    plain = machine(*INTEL_AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", level)
    cpu.current.cache_clear()
    assert cpu.current() == plain and "capped" not in cpu.current().describe()


def test_cap_environment_holds_openblas_aten_and_xla_to_the_cap(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert cpu.cap_environment() == {}
    assert cpu.cap_environment("AVX2_VNNI") == {
        "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI",
        "OPENBLAS_CORETYPE": "Haswell",
        "ATEN_CPU_CAPABILITY": "avx2",
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
    }
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "avx512_core_bf16")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Zen")  # set by the user: kept
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")  # added to
    assert cpu.cap_environment() == {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
        "OPENBLAS_CORETYPE": "Zen",
        "ATEN_CPU_CAPABILITY": "avx512",
        "XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_cpu_max_isa=AVX512",
    }
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX")  # the user's own limit: kept
    assert cpu.cap_environment()["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX"


@pytest.mark.skipif("avx512f" not in cpu._read().flags, reason="needs a CPU with AVX-512 to cap")
def test_tensorflow_obeys_the_cap_it_is_described_by():
    """The cap is real: under it TensorFlow's oneDNN convolution on an AVX-512 CPU runs AVX2 code."""
    code = (
        "import tensorflow as tf\n"
        "tf.nn.conv2d(tf.ones([16, 35, 35, 96]), tf.ones([3, 3, 96, 96]), 1, 'SAME')\n"
        "from keras_inception.core import cpu\n"
        "print('CPU:', cpu.current().describe())\n"
    )

    def run(**cap):
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
        env.update(ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="1", **cap)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.splitlines()
        kernels = {line.split(",")[6] for line in lines if ",exec,cpu,convolution," in line}
        return kernels, next(line for line in lines if line.startswith("CPU:"))

    kernels, described = run(ONEDNN_MAX_CPU_ISA="AVX2")  # (uncapped, this CPU runs avx512_core kernels)
    assert kernels and all(k.endswith(":avx2") for k in kernels), kernels
    assert described.endswith("instruction set capped at AVX2 by ONEDNN_MAX_CPU_ISA")
    assert "avx512" not in described.split("(")[-1]
