"""Device and dtype defaults: CUDA -> bfloat16; CPU -> bfloat16 where the CPU computes it natively, else float32."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        msg = f"device must be a torch device such as 'cpu' or 'cuda:0', but got {device!r}"
        raise ValueError(msg) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={device!r} was asked for, but CUDA is not available on this machine"
        raise ValueError(msg)
    return resolved


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX on x86 (the checks PyTorch itself exposes)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    msg = f"dtype must be one of float32, bfloat16, float16 (or None for automatic), but got {dtype!r}"
    raise ValueError(msg)
