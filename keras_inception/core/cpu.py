"""The CPU this runs on: its model, its instruction-set flags, and whether it computes
bfloat16 fast enough to be the default.

    from keras_inception.core import cpu
    cpu.current().model, cpu.current().relevant_flags()
    policy = cpu.default_policy()   # "mixed_bfloat16" with bfloat16 hardware, else "float32"

Read from ``/proc/cpuinfo`` (Linux), ``sysctl`` (macOS), else the model alone with no flags:
a few lines instead of a dependency (py-cpuinfo runs CPUID through generated machine code
and a subprocess, for the same flags Linux already lists). ``KERAS_INCEPTION_CPUINFO``
names another cpuinfo file (a test, or a machine described by a file).

oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA``, or its older name ``DNNL_MAX_CPU_ISA``),
which TensorFlow's and PyTorch's CPU kernels obey, is honoured: ``ONEDNN_MAX_CPU_ISA=AVX2`` on an
AMX Xeon gives the flags, and so the default precision, of an AVX2-only CPU, and
:meth:`CPU.describe` says so. :func:`cap_environment` gives the variables that hold NumPy's
OpenBLAS, PyTorch's own kernels and XLA's generated code to the same cap (tools/benchmark.py and
tools/peak.py pass them to their workers), so that one machine can measure what an older CPU's
instruction set does.

bfloat16 is the default where the CPU computes it in hardware: Intel's AMX (``amx_bf16``),
AVX512_BF16 (``avx512_bf16``: AMD Zen 4, Intel Cooper Lake and later) or Arm's BF16
(``bf16``). Elsewhere it is emulated (converted to float32 around every kernel) and slower:
Inception-ResNet-v2's bfloat16 inference at 0.9x its float32 on an AVX2-only AMD EPYC
(issue 27). AVX512_BF16 without AMX is fast enough: on an AMD EPYC Zen 4 (2 cores) the folded
network's mixed_bfloat16 inference at batch 16 ran at 2.4x its float32 (4.95 against 2.03
images/s, interleaved, 4 rounds, on a shared machine).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import subprocess
import warnings

CPUINFO = "/proc/cpuinfo"
# the flags the benchmark records: vector width, FMA, bfloat16 and int8 (VNNI, AMX) units
RELEVANT = (
    *("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"),  # x86
    *("asimd", "bf16", "i8mm"),  # Arm
)
BFLOAT16_UNITS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512_BF16", "bf16": "Arm BF16"}  # best first

# oneDNN's x86 instruction-set levels, lowest first, with the cpuinfo flags each one adds (its
# aliases: AVX10_1_512 is AVX512_CORE_FP16, AVX10_1_512_AMX is AVX512_CORE_AMX)
ISA_LEVELS: dict[str, tuple[str, ...]] = {
    "SSE41": (),
    "AVX": ("avx",),
    "AVX2": ("avx2", "fma"),
    "AVX2_VNNI": ("avx_vnni",),
    "AVX2_VNNI_2": ("avx_vnni_int8", "avx_ne_convert"),
    "AVX512_CORE": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"),
    "AVX512_CORE_VNNI": ("avx512_vnni",),
    "AVX512_CORE_BF16": ("avx512_bf16",),
    "AVX512_CORE_FP16": ("avx512_fp16",),
    "AVX512_CORE_AMX": ("amx_bf16", "amx_int8", "amx_tile"),
    "AVX512_CORE_AMX_FP16": ("amx_fp16",),
}
ISA_ALIASES = {
    "AVX10_1_512": "AVX512_CORE_FP16",
    "AVX10_1_512_AMX": "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16",
}
# what holds NumPy's OpenBLAS, PyTorch's ATen kernels and XLA to a cap:
# (OPENBLAS_CORETYPE, ATEN_CPU_CAPABILITY, XLA_FLAGS' --xla_cpu_max_isa)
_CAP_LIBRARIES = {
    "AVX": ("Sandybridge", "default", "AVX"),
    "AVX2": ("Haswell", "avx2", "AVX2"),
    "AVX512_CORE": ("SkylakeX", "avx512", "AVX512"),
}


def _level(name: str | None) -> str | None:
    """oneDNN's level ``name`` (any case, aliases resolved), or None (ALL, DEFAULT, unknown)."""
    name = (name or "").upper()
    name = ISA_ALIASES.get(name, name)
    return name if name in ISA_LEVELS else None


@dataclasses.dataclass(frozen=True)
class CPU:
    model: str
    flags: frozenset[str]
    vendor: str = ""  # x86's vendor_id (AuthenticAMD, GenuineIntel), else empty
    isa_cap: str = ""  # the ONEDNN_MAX_CPU_ISA level that removed flags, else empty
    cap_by: str = ""  # the variable that set it: ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA

    def relevant_flags(self) -> list[str]:
        """The flags of :data:`RELEVANT` this CPU has, in that order."""
        return [f for f in RELEVANT if f in self.flags]

    @property
    def bfloat16(self) -> str | None:
        """The unit that computes bfloat16 (``AMX``, ``AVX512_BF16``, ``Arm BF16``), or None: emulated."""
        return next((unit for flag, unit in BFLOAT16_UNITS.items() if flag in self.flags), None)

    def describe(self) -> str:
        """One line for a report: the model and its relevant flags."""
        line = f"{self.model} ({' '.join(self.relevant_flags()) or 'no flags read'})"
        return line + (f", instruction set capped at {self.isa_cap} by {self.cap_by}" if self.isa_cap else "")

    def capped(self, level: str | None, variable: str = "ONEDNN_MAX_CPU_ISA") -> CPU:
        """This CPU as oneDNN sees it under ``ONEDNN_MAX_CPU_ISA=level``: the flags of the levels
        above it removed. ``None``, ``ALL``, ``DEFAULT`` or an unknown level (oneDNN ignores
        those) leave it as it is, as does a cap above everything it has."""
        level = _level(level)
        if level is None:
            return self
        above = list(ISA_LEVELS)[list(ISA_LEVELS).index(level) + 1 :]
        removed = {flag for name in above for flag in ISA_LEVELS[name]} & self.flags
        if not removed:
            return self
        return dataclasses.replace(self, flags=self.flags - removed, isa_cap=level, cap_by=variable)


def parse_cpuinfo(text: str) -> CPU:
    """A CPU from ``/proc/cpuinfo``'s text (x86's ``model name`` / ``flags``, Arm's
    ``Features`` and, where it names none, ``CPU part``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu part")
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    return CPU(model or platform.processor() or "unknown", flags, fields.get("vendor_id", ""))


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _macos() -> CPU:
    model = _sysctl("machdep.cpu.brand_string") or "unknown"
    names = _sysctl("machdep.cpu.features").split() + _sysctl("machdep.cpu.leaf7_features").split()
    flags = {f.lower().replace(".", "_") for f in names}  # Intel Macs: AVX2, FMA, AVX512F, ...
    if _sysctl("hw.optional.arm.FEAT_BF16") == "1":
        flags.add("bf16")
    if _sysctl("hw.optional.arm.FEAT_I8MM") == "1":
        flags.add("i8mm")
    return CPU(model, frozenset(flags))


CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")  # oneDNN reads the first one set


def _cap_variable() -> str:
    """The variable that sets oneDNN's cap in this process (the first of :data:`CAP_VARIABLES` set)."""
    return next((name for name in CAP_VARIABLES if os.environ.get(name)), CAP_VARIABLES[0])


def isa_cap() -> str | None:
    """The instruction-set cap oneDNN obeys in this process (``ONEDNN_MAX_CPU_ISA``, else
    ``DNNL_MAX_CPU_ISA``), or None."""
    return os.environ.get(_cap_variable()) or None


def cap_environment(level: str | None = None) -> dict[str, str]:
    """Environment variables that hold NumPy's OpenBLAS, PyTorch's ATen kernels and XLA's code to
    oneDNN's cap (default: this process's, :func:`isa_cap`), for a worker process or this one
    before its first XLA compile (XLA reads ``XLA_FLAGS`` then); empty without a cap or where the
    cap removes nothing from this CPU. Variables already set are kept, and XLA_FLAGS is added to."""
    level = _level(level or isa_cap())
    if level is None or not _read().capped(level).isa_cap:  # no cap, or one that removes nothing
        return {}
    below = [name for name in list(ISA_LEVELS)[: list(ISA_LEVELS).index(level) + 1] if name in _CAP_LIBRARIES]
    if not below:
        return {}
    coretype, aten, xla = _CAP_LIBRARIES[below[-1]]
    env = {"ONEDNN_MAX_CPU_ISA": level, "OPENBLAS_CORETYPE": coretype, "ATEN_CPU_CAPABILITY": aten}
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_max_isa" not in flags:
        flags = f"{flags} --xla_cpu_max_isa={xla}".strip()
    return {**env, "XLA_FLAGS": flags}


def _read() -> CPU:
    path = os.environ.get("KERAS_INCEPTION_CPUINFO", CPUINFO)
    try:
        with open(path) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        pass
    if platform.system() == "Darwin":
        return _macos()
    return CPU(platform.processor() or platform.machine() or "unknown", frozenset())


@functools.cache
def current() -> CPU:
    """This machine's CPU (read once), as oneDNN's instruction-set cap leaves it."""
    return _read().capped(isa_cap(), _cap_variable())


def default_precision(info: CPU | None = None) -> str:
    """``bfloat16`` on a CPU that computes it in hardware, else ``float32``."""
    return "bfloat16" if (info or current()).bfloat16 else "float32"


def default_policy(info: CPU | None = None) -> str:
    """The Keras dtype policy of :func:`default_precision`: ``mixed_bfloat16`` or ``float32``."""
    return "mixed_bfloat16" if default_precision(info) == "bfloat16" else "float32"


_warned: set[str] = set()


def check_precision(precision: str, info: CPU | None = None) -> bool:
    """Warns, once per process, when bfloat16 is asked for (``precision`` names it, as
    ``bfloat16`` or ``mixed_bfloat16`` do) on a CPU that emulates it; whether it warned."""
    info = info or current()
    if "bfloat16" not in precision or info.bfloat16 or _warned:
        return False
    _warned.add("bfloat16")
    warnings.warn(
        f"bfloat16 on {info.model}: no bfloat16 hardware (AMX, AVX512_BF16, Arm BF16), so it is "
        "emulated and slower than float32; use float32 on this CPU",
        stacklevel=2,
    )
    return True
