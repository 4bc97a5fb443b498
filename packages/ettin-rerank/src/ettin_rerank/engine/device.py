"""Device, dtype and runtime defaults.

Device: CUDA, then Apple MPS, then CPU. Dtype: bfloat16 on CUDA and on CPUs that compute it natively (AVX-512 BF16
or AMX); float32 elsewhere: on a CPU without native bfloat16 (AVX2 only) it is emulated and ~3x slower than float32.
Runtime on CPU: per CPU kind (:func:`cpu_kind`), the one measured fastest there (:data:`KIND_DEFAULTS`, each entry
naming the file in ``benchmarks/results/`` it comes from), when it is installed; never a guess: a kind without a
measurement runs PyTorch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ettin_rerank.args import RUNTIMES
from ettin_rerank.options import DTYPES

logger = logging.getLogger(__name__)

RUNTIME_ENV = "ETTIN_RERANK_RUNTIME"
"""Sets the runtime of engines loaded with ``runtime=None`` (a deployment's choice, or a test suite's)."""

_DTYPES = {name: getattr(torch, canonical) for name, canonical in DTYPES.items()}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        msg = f"device must be a torch device such as 'cpu' or 'cuda:0', but got {device!r}"
        raise ValueError(msg) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={device!r} was asked for, but CUDA is not available on this machine"
        raise ValueError(msg)
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        msg = f"device={device!r} was asked for, but Apple MPS is not available on this machine"
        raise ValueError(msg)
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX on x86 (the checks PyTorch itself exposes, as :func:`cpu_kind`)."""
    return cpu_kind() in {"amx", "avx512_bf16"}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    msg = f"dtype must be one of float32, bfloat16, float16 (or None for automatic), but got {dtype!r}"
    raise ValueError(msg)


def cpu_capability() -> dict[str, object]:
    """What this CPU offers the engine: PyTorch's vector ISA (``AVX2``, ``AVX512``...), native bfloat16 (AVX-512
    BF16 / AMX) and the model name, recorded with every benchmark result (CPUs differ between machines)."""
    import platform

    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "native_bf16": cpu_has_native_bf16(),
    }


@dataclass(frozen=True)
class KindDefault:
    """What the engine runs by default on one CPU kind, and the measurement that says so."""

    runtime: str
    source: str
    openvino_streams: int = 1
    """Batches OpenVINO runs at once, each on a stream of a share of the threads (see
    :class:`~ettin_rerank.engine.openvino_runtime.OpenVINOScorer`): more than 1 only where measured faster."""


KIND_DEFAULTS: dict[str, KindDefault] = {
    "amx": KindDefault("openvino", "benchmarks/results/cpu-x86-64-amx-17m-latency-natural-peers-contention2.json "
                                   "and -150m-: OpenVINO bf16 4.35x ST fp32 vs the torch engine's bf16 4.20x (17m), "
                                   "6.06x vs 6.14x (150m), OpenVINO f32 1.16x / 1.07x the torch fp32 path; "
                                   "cpu-x86-64-amx-17m-latency.json: one RAG call against the torch engine's bf16; "
                                   "two streams 0.95x one (a probe): one stream"),
    "avx512_bf16": KindDefault("torch", "no OpenVINO measurement on this kind yet: PyTorch, as measured in "
                                        "benchmarks/results/cpu-x86-64-full-2026-11-24.txt"),
    "avx2": KindDefault("openvino", "benchmarks/results/cpu-x86-64-avx2-peers-quiet.json: OpenVINO f32 3.13x ST "
                                    "fp32 vs this engine's torch fp32 2.55x (17m), 1.71x vs 1.68x (150m), same scores; "
                                    "benchmarks/results/cpu-x86-64-avx2-latency-natural.json: two batches in flight "
                                    "on streams of 1 thread, 1.25x pairs/s and 1.08x RAG p50 vs one at a time; "
                                    "idle: cpu-x86-64-avx2-latency-natural-idle.json, 1.06x the torch engine's "
                                    "pairs/s and 1.08x RAG p50 vs one at a time; 150m idle: "
                                    "cpu-x86-64-avx2-natural-150m-idle.json, 1.86x ST fp32 vs the torch engine's "
                                    "1.48x; head on one torch thread: cpu-x86-64-avx2-17m-latency-natural-run1.json, "
                                    "1.68x ST fp32 vs the torch engine's 1.33x (17m, idle)",
                        openvino_streams=2),
}
"""The default runtime per CPU kind (dtype: bfloat16 where native, else float32, as :func:`resolve_dtype`)."""


def openvino_streams(kind: str | None) -> int:
    """How many batches OpenVINO runs at once on this CPU kind (:attr:`KindDefault.openvino_streams`)."""
    default = KIND_DEFAULTS.get(kind or "")
    return default.openvino_streams if default else 1


def cpu_kind() -> str:
    """``"amx"`` (AMX tiles), ``"avx512_bf16"`` (AVX-512 with native bf16), ``"avx512"`` (AVX-512 without it:
    Skylake-SP to Ice Lake), ``"avx2"`` or ``"other"``."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return "avx512"
    if capability.startswith("AVX2"):
        return "avx2"
    return "other"


def runtime_was_asked_for(runtime: str | None, precision: str | None) -> bool:
    """Whether the runtime was chosen (``runtime``, ``precision="int8"`` or ``$ETTIN_RERANK_RUNTIME``) rather than
    left to this CPU kind's measured default, which gives way to PyTorch for a model or attention backend OpenVINO
    does not run."""
    return runtime is not None or precision == "int8" or bool(os.environ.get(RUNTIME_ENV, "").strip())


def resolve_runtime(runtime: str | None, precision: str | None, device: torch.device) -> str:
    """``runtime`` if given (OpenVINO only on CPU), else ``$ETTIN_RERANK_RUNTIME`` if set, else the measured default
    for this CPU kind if installed (see :func:`runtime_was_asked_for`)."""
    from ettin_rerank.engine.openvino_runtime import INSTALL_HINT, openvino_available

    if runtime is None and device.type == "cpu" and os.environ.get(RUNTIME_ENV, "").strip():
        runtime = os.environ[RUNTIME_ENV].strip()
        if runtime not in RUNTIMES:
            msg = f"{RUNTIME_ENV} must be one of {', '.join(RUNTIMES)}, but got {runtime!r}"
            raise ValueError(msg)
    if runtime == "openvino" or precision == "int8":
        if device.type != "cpu":
            msg = f"runtime='openvino' (and precision='int8') run on CPU, but device is {device.type!r}"
            raise ValueError(msg)
        return "openvino"
    if runtime is not None or device.type != "cpu":
        return runtime or "torch"
    default = KIND_DEFAULTS.get(cpu_kind(), KindDefault("torch", "no measurement for this CPU kind"))
    if default.runtime == "openvino" and not openvino_available():
        logger.info("OpenVINO is the measured default on this CPU but is not installed (%s): running PyTorch",
                    INSTALL_HINT)
        return "torch"
    return default.runtime
