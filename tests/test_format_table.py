"""quant/format_table.py, the one table of formats: its codes and sizes against the C headers (parsed
here, so renumbering an enum on either side fails), its derived tuples, and each stored dtype's names
in safetensors and ONNX."""
import re
from pathlib import Path

import pytest
import torch

from arvc.quant.activations import ACT_FORMAT_OF_WEIGHTS, QMAX
from arvc.quant.format_table import (ACTIVATION_FORMATS, COMPUTE_FORMATS, dtype_codes, FLOAT_FORMATS, FORMATS,
                                     KV_CODES, KV_FORMATS, QUANTIZED_FORMATS, WEIGHT_FORMATS)
from arvc.quant.format_table import E2M1_VALUES

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def c_enum(header: str, name: str) -> dict[str, int]:
    """{enumerator: value} of ``typedef enum { ... } name;``; every enumerator must be numbered explicitly."""
    m = re.search(r"typedef enum\s*\{([^}]*)\}\s*" + name + r"\s*;", header)
    assert m, f"no `typedef enum {{...}} {name};` in the header"
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    values = {}
    for entry in (e.strip() for e in body.split(",") if e.strip()):
        m = re.fullmatch(r"(\w+)\s*=\s*(\d+)", entry)
        assert m, f"{name}: enumerator {entry!r} has no explicit value"
        values[m[1]] = int(m[2])
    return values


def kernel_mismatches(header: str) -> list[str]:
    """Where csrc/arvc_kernels.h and the table disagree: arvc_kv_format (ARVC_KV_<NAME>) and arvc_dtype
    (ARVC_<safetensors dtype>)."""
    kv = {k.removeprefix("ARVC_KV_").lower(): v for k, v in c_enum(header, "arvc_kv_format").items()}
    dtype = {k.removeprefix("ARVC_"): v for k, v in c_enum(header, "arvc_dtype").items()}
    table_dtype = {f.safetensors: f.dtype_code for f in FORMATS.values() if f.dtype_code is not None}
    return ([f"arvc_kv_format: C {kv}, table {KV_CODES}"] if kv != KV_CODES else []) + \
           ([f"arvc_dtype: C {dtype}, table {table_dtype}"] if dtype != table_dtype else [])


def quant_header_mismatches(header: str) -> list[str]:
    """Where csrc/quant_formats.h and the table disagree: ARVC_<NAME>_BLOCK and the sizeof asserts."""
    blocks = {k.lower(): int(v) for k, v in re.findall(r"#define ARVC_(\w+)_BLOCK\s+(\d+)", header)}
    sizes = {k: int(v) for k, v in re.findall(r"ARVC_STATIC_ASSERT\(sizeof\((\w+)\)\s*==\s*(\d+)", header)}
    table_blocks = {f.name: f.block for f in FORMATS.values() if f.block}
    table_sizes = {f.c_type: f.c_bytes for f in FORMATS.values() if f.c_type}
    return ([f"blocks: C {blocks}, table {table_blocks}"] if blocks != table_blocks else []) + \
           ([f"sizes: C {sizes}, table {table_sizes}"] if sizes != table_sizes else [])


def test_codes_match_arvc_kernels_h():
    assert kernel_mismatches((CSRC / "arvc_kernels.h").read_text()) == []


def test_sizes_match_quant_formats_h():
    assert quant_header_mismatches((CSRC / "quant_formats.h").read_text()) == []


@pytest.mark.parametrize("old,new", [("ARVC_KV_INT8 = 2", "ARVC_KV_INT8 = 5"),
                                     ("ARVC_KV_NVFP4 = 4 }", "ARVC_KV_NVFP4 = 4, ARVC_KV_INT4 = 5 }"),
                                     ("ARVC_BF16 = 2", "ARVC_BF16 = 3")])
def test_a_renumbered_kernel_enum_is_caught(old, new):
    header = (CSRC / "arvc_kernels.h").read_text()
    assert old in header
    assert kernel_mismatches(header.replace(old, new))


@pytest.mark.parametrize("old,new", [("#define ARVC_NVFP4_BLOCK 16", "#define ARVC_NVFP4_BLOCK 32"),
                                     ("sizeof(arvc_e4m3) == 1", "sizeof(arvc_e4m3) == 2")])
def test_a_changed_quant_layout_is_caught(old, new):
    header = (CSRC / "quant_formats.h").read_text()
    assert old in header
    assert quant_header_mismatches(header.replace(old, new))


def test_an_implicitly_numbered_enumerator_is_refused():
    with pytest.raises(AssertionError, match="'B' has no explicit value"):
        c_enum("typedef enum { A = 1, B } e;", "e")


def test_derived_tuples():
    assert WEIGHT_FORMATS == ("fp32", "fp16", "bf16", "int8", "fp8", "nvfp4")
    assert FLOAT_FORMATS + QUANTIZED_FORMATS == WEIGHT_FORMATS
    assert QUANTIZED_FORMATS == ("int8", "fp8", "nvfp4")
    assert KV_FORMATS == ("fp32", "fp16", "int8", "fp8", "nvfp4")
    assert tuple(KV_CODES) == ("fp16", "int8", "fp8", "nvfp4")
    assert ACTIVATION_FORMATS == ("int8", "fp8")
    assert COMPUTE_FORMATS == ("fp32", "fp16", "bf16")
    assert dtype_codes() == {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    assert QMAX == {"int8": 127.0, "fp8": 448.0}
    assert ACT_FORMAT_OF_WEIGHTS == {"int8": "int8", "fp8": "fp8", "nvfp4": "fp8"}


def test_rows_are_consistent():
    for name, f in FORMATS.items():
        assert f.name == name
        assert set(f.kind) <= {"weight", "activation", "kv-cache", "compute"} and f.kind, name
        assert (f.qmax is not None) == f.quantized == (f.act_format is not None), name
        assert f.act_format in (None,) + ACTIVATION_FORMATS, name
        assert ("compute" in f.kind) == (f.dtype_code is not None), name  # the kernels take every compute dtype
        assert (f.kv_code is None) or ("kv-cache" in f.kind), name
        assert (f.torch_dtype.itemsize * 8) % f.bits == 0, name  # whole values per stored element
    assert all(FORMATS[f].quantized for f in ACTIVATION_FORMATS)
    # qmax is the largest magnitude a code holds
    assert FORMATS["int8"].qmax == torch.iinfo(torch.int8).max
    assert FORMATS["fp8"].qmax == torch.finfo(torch.float8_e4m3fn).max
    assert FORMATS["nvfp4"].qmax == max(E2M1_VALUES)


@pytest.mark.parametrize("name", list(FORMATS))
def test_dtype_round_trips_through_safetensors(name, tmp_path):
    from arvc.checkpoints.safetensors_io import (SAFETENSORS_DTYPES, read_safetensors, read_safetensors_header,
                                                 write_safetensors_atomic)

    f = FORMATS[name]
    assert SAFETENSORS_DTYPES[f.safetensors] == f.torch_dtype
    path = tmp_path / "t.safetensors"
    write_safetensors_atomic(path, {"t": torch.zeros(2, 16).to(f.torch_dtype)})
    assert read_safetensors_header(path)[0]["t"]["dtype"] == f.safetensors
    assert read_safetensors(path)[0]["t"].dtype == f.torch_dtype


@pytest.mark.parametrize("name", list(FORMATS))
def test_onnx_element_type_is_the_torch_dtype(name):
    onnx = pytest.importorskip("onnx")

    f = FORMATS[name]
    element = onnx.helper.tensor_dtype_to_np_dtype(getattr(onnx.TensorProto, f.onnx))
    assert str(element) == str(f.torch_dtype).removeprefix("torch.")
