"""CPU detection and the default precision it gives, on faked /proc/cpuinfo files."""

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
