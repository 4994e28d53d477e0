"""Where a backend runs and in which dtype: the device check and ``--dtype auto``, the same for every backend."""

from __future__ import annotations

from promptlab.errors import PromptlabError

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
# CPU flags of native bf16 arithmetic (Intel AMX, AVX512-BF16); without them bf16 is emulated and slower.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = open(cpuinfo, encoding="utf-8", errors="replace").read()
    except OSError:  # not Linux: no flags known, so no bf16 claim
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}


def check_device(device: str | None) -> str:
    """The device to run on: ``device`` if this torch can use it, else a PromptlabError; None: cuda or cpu."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type if isinstance(device, str) else None
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise PromptlabError(f"unknown device {device!r}; use cpu, cuda, cuda:N (a GPU's index) or mps.")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = torch.device(device).index or 0
        if count == 0:
            raise PromptlabError(
                f"device {device!r}: this torch ({torch.__version__}) finds no CUDA GPU (a CPU-only build, or "
                "no GPU driver); use --device cpu, or install a CUDA build of torch."
            )
        if index >= count:
            raise PromptlabError(
                f"device {device!r}: there are only {count} CUDA GPU(s) (cuda:0..{count - 1})."
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise PromptlabError(f"device {device!r}: MPS (Apple GPU) is not available here; use --device cpu.")
    return device


def resolve_dtype(dtype: str, device: str | None = None, *, cpu_flags: set[str] | None = None) -> str:
    """The dtype to load with: ``auto`` is bfloat16 where the hardware computes in it natively, else float32.

    bf16 is what makes local embedding fast (2.1-2.4x fp32 on an AMX CPU: `experiments/bench/`) at a cost
    of about a quarter to half a point of STS; float32 stays the choice where bf16 would be emulated (slower than fp32).
    float16 is never chosen automatically: some models (Gemma) overflow in it.
    """
    if dtype not in DTYPE_NAMES:
        raise PromptlabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}.")
    if dtype != "auto":
        return dtype
    import torch

    device = check_device(device)
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device == "cpu":
        flags = _cpu_flags() if cpu_flags is None else cpu_flags
        return "bfloat16" if flags & set(NATIVE_BF16_CPU_FLAGS) else "float32"
    return "float32"
