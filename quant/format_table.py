"""The one table of arvc's number formats: what each can be used for, how it is stored, its codes in the C
ABI and the hardware that runs it natively. Every other list of format names is derived from it.

Kinds (the roles a format plays):
- ``weight``: a DiT weight storage format (``--precision``); quantized ones store codes plus scales.
- ``activation``: a quantized GEMM-input format (Q/DQ before the block linears, quant/activations.py).
- ``kv-cache``: a KV-cache storage format (``--kv-cache``, quant/kv.py).
- ``compute``: an arithmetic dtype of a backend and of the cache kernels' inputs and outputs.

tests/test_format_table.py ties the codes and sizes to csrc/arvc_kernels.h and csrc/quant_formats.h.
Importing this module imports nothing heavy (torch is reached lazily), so the CLI validates format names with it
before any heavy import; the encoders and decoders are quant/formats.py's CODECS.
"""
from __future__ import annotations

from dataclasses import dataclass

E4M3_MAX = 448.0  # largest finite float8 e4m3fn value
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # code & 7 -> magnitude; bit 3 is the sign
NVFP4_BLOCK = 16  # values sharing one E4M3 block scale


@dataclass(frozen=True)
class Format:
    name: str
    kind: tuple[str, ...]  # weight | activation | kv-cache | compute
    torch_name: str  # torch dtype of one stored element, as a plan's weights file holds it
    safetensors: str  # that element's dtype in a safetensors header
    onnx: str  # that element's onnx.TensorProto data type
    bits: int  # payload bits per value, scales excluded
    quantized: bool = False  # codes plus scales (quant/formats.py CODECS encodes and decodes them)
    qmax: float | None = None  # largest code magnitude: a scale is amax / qmax
    block: int = 0  # values sharing one block scale (0: one scale per row or tensor)
    c_type: str | None = None  # csrc/quant_formats.h type of one stored value (of one block when block > 0)
    kv_code: int | None = None  # arvc_kv_format (csrc/arvc_kernels.h): a cache the kernels read and write
    dtype_code: int | None = None  # arvc_dtype (csrc/arvc_kernels.h): a kernel input / output dtype
    act_format: str | None = None  # quantized weights: the activation format their GEMM inputs pair with
    native_sm: tuple[int, int] | None = None  # oldest NVIDIA compute capability running it natively; None: all

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.torch_name)

    @property
    def c_bytes(self) -> int:
        """sizeof(c_type): one value, or one block of packed values."""
        return max(self.block, 1) * self.bits // 8


_ROWS = (
    Format("fp32", ("weight", "kv-cache", "compute"), "float32", "F32", "FLOAT", 32, dtype_code=0),
    Format("fp16", ("weight", "kv-cache", "compute"), "float16", "F16", "FLOAT16", 16, kv_code=1, dtype_code=1),
    Format("bf16", ("weight", "compute"), "bfloat16", "BF16", "BFLOAT16", 16, dtype_code=2,
           native_sm=(8, 0)),  # Ampere
    Format("int8", ("weight", "activation", "kv-cache"), "int8", "I8", "INT8", 8, quantized=True, qmax=127.0,
           kv_code=2, act_format="int8"),
    Format("fp8", ("weight", "activation", "kv-cache"), "float8_e4m3fn", "F8_E4M3", "FLOAT8E4M3FN", 8,
           quantized=True, qmax=E4M3_MAX, c_type="arvc_e4m3", kv_code=3, act_format="fp8",
           native_sm=(8, 9)),  # Ada, Hopper
    # two E2M1 codes per byte; the E4M3 block scales pair with fp8 activations (W4A8) on Blackwell and Hopper alike
    Format("nvfp4", ("weight", "kv-cache"), "uint8", "U8", "UINT8", 4, quantized=True, qmax=6.0,
           block=NVFP4_BLOCK, c_type="arvc_nvfp4_block", kv_code=4, act_format="fp8",
           native_sm=(10, 0)),  # Blackwell
)

FORMATS: dict[str, Format] = {f.name: f for f in _ROWS}


def _names(keep) -> tuple[str, ...]:
    return tuple(f.name for f in _ROWS if keep(f))


WEIGHT_FORMATS = _names(lambda f: "weight" in f.kind)
ACTIVATION_FORMATS = _names(lambda f: "activation" in f.kind)
KV_FORMATS = _names(lambda f: "kv-cache" in f.kind)
COMPUTE_FORMATS = _names(lambda f: "compute" in f.kind)
QUANTIZED_FORMATS = _names(lambda f: f.quantized)
FLOAT_FORMATS = _names(lambda f: "weight" in f.kind and not f.quantized)  # weights stored as plain floats
KV_CODES = {f.name: f.kv_code for f in _ROWS if f.kv_code is not None}  # the caches the csrc kernels hold


def dtype_codes() -> dict:
    """torch dtype -> arvc_dtype code: the dtypes the csrc kernels take as inputs and outputs."""
    return {f.torch_dtype: f.dtype_code for f in _ROWS if f.dtype_code is not None}
