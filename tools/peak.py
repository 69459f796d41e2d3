"""The machine's matmul limit, measured as a BLAS benchmark does, beside the CPU's theoretical one.

    python tools/peak.py                          # float32 and bfloat16, sizes 1024 2048 4096
    python tools/peak.py --sizes 512 --seconds 1  # quick
    python tools/peak.py worker tf bfloat16 4096 --seconds 3   # one size, one process
    python tools/peak.py clock                     # the cores' clock, measured (MHz)

Every (library, precision, size) runs in a fresh process of its own (no pool, cache or thread
state carried from one to the next), calls an n x n matmul for about ``--seconds`` (at least 3
calls) after one warm-up and keeps the fastest call: GFLOP/s = 2 n^3 / seconds. float32 runs
through NumPy's BLAS and through TensorFlow (oneDNN); bfloat16 through TensorFlow (oneDNN);
both through OpenVINO where it is installed. A precision's peak is its fastest size and
library; where bfloat16 runs on the float32 FMA pipes (AVX512_BF16 without AMX), at least twice
the float32 peak (:func:`vector_bfloat16`: OpenVINO's bfloat16 convolutions outran every
bfloat16 GEMM on AMD Zen 4).

The theoretical limit is FLOP per cycle per core x cores x the clock. The clock is measured
(:func:`clock`): every core at once runs a chain of dependent 64-bit adds, one a cycle on any
x86-64 core, and a chain of dependent multiplies, one every three cycles, taking turns in three
rounds (the fastest call of each); the two must agree within 10%. Without it (not x86-64 Linux
or macOS, memory that cannot be made executable, or chains that disagree) the clock is the one
/proc/cpuinfo reports, on most machines the base clock, which a boosting core beats. A core may
run wide vector code below its integer clock, so the theoretical limit is an upper bound either
way. FLOP per cycle, float32: 32 on AVX2 + FMA (two 256-bit FMA pipes) and on AMD Zen 4's
AVX-512 (a 512-bit FMA takes both 256-bit pipes, one per cycle), 64 on Intel's AVX-512 (two
512-bit FMA ports; some parts have one); 16 on SSE alone. bfloat16: 1024 with AMX (a tile
multiply, 16x16x32 in 16 cycles), twice float32's with AVX512_BF16 (vdpbf16ps: two products per
32-bit lane), else float32's (converted, emulated). """

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import mmap
import os
import platform
import struct
import subprocess
import sys
import threading
import time

PRECISIONS = {"float32": ("numpy", "tf", "openvino"), "bfloat16": ("tf", "openvino")}


def installed(library: str) -> bool:
    return importlib.util.find_spec("tensorflow" if library == "tf" else library) is not None


def fastest_call(call, seconds: float) -> float:
    """Seconds of the fastest call of ``call`` over about ``seconds`` (at least 3 calls) after a warm-up."""
    call()
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
        calls += 1
    return best


def worker(library: str, precision: str, n: int, seconds: float) -> float:
    """GFLOP/s of the fastest n x n matmul in this process."""
    if library == "numpy":
        import numpy as np

        a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        call = lambda: a @ a  # noqa: E731
    elif library == "openvino":
        import numpy as np
        import openvino as ov
        from openvino import opset13 as ops

        a = ops.parameter([n, n], np.float32)
        product = ops.reduce_sum(ops.matmul(a, a, False, False), np.int64(1))  # n values back, not n^2
        hint = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"}
        compiled = ov.Core().compile_model(ov.Model([product], [a]), "CPU", hint)
        x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
        request = compiled.create_infer_request()
        call = lambda: request.infer([x])  # noqa: E731
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        a = tf.cast(tf.random.normal((n, n), seed=0), precision)
        f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, a)[0, :1]))  # fetches one value, not n^2
        call = lambda: f().numpy()  # noqa: E731
    return 2 * n**3 / fastest_call(call, seconds) / 1e9


def measurable(info) -> tuple[tuple[str, ...], str | None]:
    """The precisions to measure on ``info`` (a keras_inception.core.cpu.CPU), and a line saying
    why bfloat16 is not among them, or None. Under ONEDNN_MAX_CPU_ISA below the CPU's bfloat16
    units, TensorFlow still sees the units and hands bfloat16 matmuls to oneDNN, which has no
    kernel for them: the process aborts. bfloat16 is not the default there anyway (core.cpu)."""
    if info.isa_cap and not info.bfloat16:
        why = (
            f"bfloat16 not measured: under ONEDNN_MAX_CPU_ISA={info.isa_cap} TensorFlow's bfloat16 "
            "matmul aborts (the cap hides the CPU's bfloat16 units from oneDNN, not from TensorFlow)"
        )
        return ("float32",), why
    return tuple(PRECISIONS), None


def measure(
    sizes: list[int], seconds: float, precisions=tuple(PRECISIONS), flags: frozenset[str] | None = None
) -> dict:
    """``{precision: {"gflops": best, "rows": [{library, size, gflops}, ...]}}``, each row a
    fresh process of this file; with the CPU's ``flags``, bfloat16 as :func:`vector_bfloat16`."""
    result = {}
    for precision in precisions:
        rows = []
        for library in filter(installed, PRECISIONS[precision]):
            for n in sizes:
                command = [sys.executable, __file__, "worker", library, precision, str(n)]
                command += ["--seconds", str(seconds)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
                    raise SystemExit(
                        f"peak.py: the {library} {precision} {n}x{n} worker failed ({how}): {last}"
                    )
                gflops = float(done.stdout.strip().splitlines()[-1])
                rows.append({"library": library, "size": n, "gflops": gflops})
        result[precision] = {"gflops": max(r["gflops"] for r in rows), "rows": rows}
    if flags is not None:
        vector_bfloat16(result, flags)
    return result


def vector_bfloat16(result: dict, flags: frozenset[str]) -> None:
    """Raise the bfloat16 limit to twice the float32 one where bfloat16 runs on the float32 FMA
    pipes (AVX512_BF16 without AMX: vdpbf16ps does two products per 32-bit lane, an FMA one).

    The float32 GEMM runs its pipes at the clock they really have (which the VM may not report);
    the same pipes give bfloat16 twice those FLOP. oneDNN's bfloat16 GEMM reaches less of them
    than its float32 one (on AMD Zen 4), while OpenVINO's bfloat16 convolutions reach more, so
    the bfloat16 GEMM alone is no limit there. Recorded as ``from_float32``.
    """
    if "avx512_bf16" not in flags or "amx_bf16" in flags or not {"float32", "bfloat16"} <= set(result):
        return
    scaled = 2 * result["float32"]["gflops"]
    result["bfloat16"]["from_float32"] = scaled
    result["bfloat16"]["gflops"] = max(result["bfloat16"]["gflops"], scaled)


def flop_per_cycle(flags: frozenset[str], vendor_amd: bool) -> dict[str, int]:
    """Per core, by the rules in this file's docstring."""
    fp32 = 16
    if "avx2" in flags and "fma" in flags:
        fp32 = 32
    if "avx512f" in flags and not vendor_amd:
        fp32 = 64
    bf16 = 1024 if "amx_bf16" in flags else 2 * fp32 if "avx512_bf16" in flags else fp32
    return {"float32": fp32, "bfloat16": bf16}


CPUINFO = "/proc/cpuinfo"


def cpuinfo_mhz(path: str = CPUINFO) -> float | None:
    try:
        with open(path) as f:
            return max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):  # no such file, or no "cpu MHz" line
        return None


# x86-64 machine code, System V ABI (n in rdi): rcx = n; rax = 0; n times: LINKS x LINK; return rax.
LINKS = 256
CHAINS = {  # name: (one link, its latency in cycles on x86-64 cores)
    "add": (b"\x48\x01\xc8", 1),  # add rax, rcx (rcx unknown to the renamer: no add-immediate folding)
    "imul": (b"\x48\x0f\xaf\xc0", 3),  # imul rax, rax
}


def chain(link: bytes):
    """``(f, memory)``: ``f(n)`` runs ``n * LINKS`` dependent ``link`` instructions from
    ``memory``, an executable page: keep it open while calling ``f``."""
    body = link * LINKS
    back = struct.pack("<i", -(len(body) + 9))  # from after jnz to the first link
    code = b"\x48\x89\xf9\x31\xc0" + body + b"\x48\xff\xcf\x0f\x85" + back + b"\xc3"
    memory = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    memory.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    return ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long)(address), memory


def chain_mhz(threads: int, seconds: float, rounds: int = 3) -> dict[str, float]:
    """``{chain: MHz}``: each chain run by ``threads`` threads at once (ctypes lets go of the GIL),
    the fastest call of any thread; the chains take turns in ``rounds`` rounds, so a load that
    comes or goes meanwhile (another process's AVX-512 code lowers the clock) reaches both alike;
    in this process (``clock`` runs it in another)."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (link, latency) in CHAINS.items():
            mhz = _chain_mhz(link, latency, threads, seconds / rounds)
            best[name] = max(best.get(name, 0.0), mhz)
    return best


def _chain_mhz(link: bytes, latency: int, threads: int, seconds: float, n: int = 20_000) -> float:
    f, memory = chain(link)
    best = []
    workers = [
        threading.Thread(target=lambda: best.append(fastest_call(lambda: f(n), seconds)))
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    memory.close()
    return n * LINKS * latency / min(best) / 1e6


def clock(threads: int, seconds: float = 0.3) -> tuple[float | None, str]:
    """``(MHz, where it comes from)``: measured with every one of ``threads`` busy (this module's
    docstring) in a process of its own, else /proc/cpuinfo's clock, saying why."""
    fallback = CPUINFO
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform not in ("linux", "darwin"):
        return cpuinfo_mhz(), f"{fallback}; not measured on {platform.machine()} {sys.platform}"
    command = [sys.executable, __file__, "clock", "--threads", str(threads), "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        return cpuinfo_mhz(), f"{fallback}; the measurement failed ({how})"
    chains = json.loads(done.stdout.strip().splitlines()[-1])
    low, high = min(chains.values()), max(chains.values())
    if high > 1.1 * low:
        said = ", ".join(f"{k} {v:.0f}" for k, v in chains.items())
        return cpuinfo_mhz(), f"{fallback}; the measured chains disagree ({said} MHz)"
    return high, f"measured: dependent adds and multiplies on {threads} cores at once"


def theoretical(
    cores: int, mhz: float | None, flags: frozenset[str], vendor_amd: bool, clock_source: str = CPUINFO
) -> dict:
    """``{precision: GFLOP/s}`` (None without a clock) and the assumptions behind them."""
    per_cycle = flop_per_cycle(flags, vendor_amd)
    return {
        "flop_per_cycle_per_core": per_cycle,
        "cores": cores,
        "mhz": mhz,
        "clock_source": clock_source,
        **{p: (f * cores * mhz / 1e3 if mhz else None) for p, f in per_cycle.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", choices=("measure", "worker", "clock"), default="measure")
    p.add_argument("args", nargs="*", help="worker: LIBRARY PRECISION SIZE")
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--seconds", type=float, default=3.0, help="seconds calling each size (clock: each chain)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="clock: cores kept busy")
    p.add_argument("--output", help="also write the result here (JSON, for benchmark.py --peak)")
    args = p.parse_args(argv)
    if args.command == "worker":
        library, precision, n = args.args
        print(worker(library, precision, int(n), args.seconds))
        return 0
    if args.command == "clock":
        print(json.dumps(chain_mhz(args.threads, args.seconds)))
        return 0
    from keras_inception.core import cpu

    os.environ.update(cpu.cap_environment())  # the workers' NumPy obeys ONEDNN_MAX_CPU_ISA too
    precisions, why = measurable(cpu.current())
    if why:
        print(why, file=sys.stderr)
    result = measure(args.sizes, args.seconds, precisions, flags=cpu.current().flags)
    result = json.dumps(result, indent=1)
    print(result)
    if args.output:
        with open(args.output, "w") as f:
            f.write(result + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
