"""Device and dtype defaults.

Device: CUDA, then Apple MPS, then CPU. Dtype: bfloat16 on CUDA and on CPUs that compute it natively (AVX-512 BF16
or AMX); float32 elsewhere: on a CPU without native bfloat16 (AVX2 only) it is emulated and ~3x slower than float32.
"""

from __future__ import annotations

import torch

from ettin_rerank.options import DTYPES

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
    """AVX-512 BF16 or AMX on x86 (the checks PyTorch itself exposes)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


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
    import os
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
