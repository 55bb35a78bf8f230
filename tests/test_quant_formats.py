"""Quantized formats, bit-exact against hand-computed vectors (DESIGN section 3)."""
import pytest
import torch

from arvc.quant.format_table import FORMATS
from arvc.quant.formats import NVFP4, Fp8E4M3, Int8, e2m1_codes, stored_bits_per_element


def test_int8_rounds_half_to_even_per_tensor():
    x = torch.tensor([127.0, -2.5, 3.5, 0.5, -0.5, 1.5, 100.2])  # amax 127 -> scale exactly 1
    f = Int8("per_tensor").encode(x)
    assert f["scale"].tolist() == [1.0]
    assert f["data"].tolist() == [127, -2, 4, 0, 0, 2, 100]
    assert Int8("per_tensor").decode(f).tolist() == [127.0, -2.0, 4.0, 0.0, 0.0, 2.0, 100.0]


def test_int8_per_channel_and_zero_rows():
    x = torch.tensor([[254.0, 1.0, -3.0], [0.0, 0.0, 0.0]])
    f = Int8("per_channel").encode(x)
    assert f["scale"].tolist() == [2.0, 1.0]  # an all-zero row keeps scale 1 (no division by zero)
    assert f["data"].tolist() == [[127, 0, -2], [0, 0, 0]]


def test_int8_per_token_groups_rows_of_the_last_dimension():
    x = torch.tensor([[[127.0, -127.0], [0.5, 0.25]]])
    f = Int8("per_token").encode(x)
    assert f["scale"].shape == (1, 2) and f["scale"][0, 0] == 1.0
    assert f["data"][0, 0].tolist() == [127, -127] and f["data"][0, 1].tolist() == [127, 64]


def test_fp8_e4m3_bits_rounding_subnormals_and_saturation():
    x = torch.tensor([448.0, 1.0, -1.0, 17.0, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 0.0])
    f = Fp8E4M3("per_tensor").encode(x)
    assert f["scale"].tolist() == [1.0]
    # 448 = 0 1111 110; 1 = 0 0111 000; 17 -> 16 (tie to even mantissa) = 0 1011 000;
    # 2^-9 is the smallest subnormal; 2^-10 ties to 0; 1.5 * 2^-9 ties to the even subnormal 2 * 2^-9
    assert f["data"].tolist() == [0x7E, 0x38, 0xB8, 0x58, 0x01, 0x00, 0x02, 0x00]
    assert Fp8E4M3("per_tensor").decode(f)[:5].tolist() == [448.0, 1.0, -1.0, 16.0, 2.0**-9]


def test_e2m1_ties_go_to_the_even_code():
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 9.0, -0.1, -0.5, -6.0])
    assert e2m1_codes(v).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 7, 8, 9, 15]  # -0.1 -> -0 (code 8)


BLOCK = [0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6, -0.5, -1, -3, -6, -0.1, 4, 1.5]


def test_nvfp4_packs_a_hand_computed_block():
    x = torch.tensor([BLOCK, [0.0] * 16]) * 448  # amax 6 * 448 -> scale_2 = 1, block scale 448
    f = NVFP4().encode(x)
    assert f["weight_scale_2"].item() == 1.0
    assert f["weight_scale"].tolist() == [[0x7E], [0x38]]  # e4m3(448); an all-zero block gets 1.0
    assert f["weight"][0].tolist() == [0x00, 0x22, 0x44, 0x66, 0x97, 0xDA, 0x8F, 0x36]
    assert f["weight"][1].tolist() == [0] * 8
    want = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4, 6, -0.5, -1, -3, -6, 0, 4, 1.5]) * 448
    assert torch.equal(NVFP4().decode(f)[0], want) and not NVFP4().decode(f)[1].any()


def test_nvfp4_block_scale_is_e4m3_rounded_and_clamped():
    x = torch.zeros(2, 16)
    x[0, 0] = 2688.0  # tensor amax -> scale_2 = 1
    x[1, 0] = 3.0 * 17  # block amax / 6 = 8.5 -> e4m3 rounds to 8 (tie to even mantissa)
    f = NVFP4().encode(x)
    assert f["weight_scale"][1].view(torch.float8_e4m3fn).float().item() == 8.0
    assert NVFP4().decode(f)[1, 0].item() == 48.0  # 51 / 8 = 6.375 saturates to code 6.0
    tiny = torch.zeros(1, 16)
    tiny[0, 0], tiny[0, 1] = 2688.0, 0.0
    small = torch.cat([tiny, torch.full((1, 16), 1e-3)])  # block amax / 6 below 2^-9 -> clamped to 2^-9
    assert NVFP4().encode(small)["weight_scale"][1].item() == 0x01


def test_nvfp4_all_zero_tensor_and_bad_shapes():
    f = NVFP4().encode(torch.zeros(1, 32))
    assert f["weight_scale_2"].item() == 1.0 and f["weight_scale"].tolist() == [[0x38, 0x38]]
    assert not NVFP4().decode(f).any()
    with pytest.raises(ValueError, match="multiple of 16"):
        NVFP4().encode(torch.ones(2, 20))


@pytest.mark.parametrize("fmt", [Int8(), Fp8E4M3(), NVFP4()], ids=["int8", "fp8", "nvfp4"])
def test_non_finite_input_is_refused(fmt):
    x = torch.ones(2, 16)
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fmt.encode(x)


def test_storage_cost_matches_the_promise():
    assert stored_bits_per_element("nvfp4", (4096, 4096)) == pytest.approx(4.5, abs=1e-5)
    assert stored_bits_per_element("int8", (4096, 4096)) == pytest.approx(8.0078125)
    assert stored_bits_per_element("fp8", (4096, 4096), "per_tensor") == pytest.approx(8.0, abs=1e-5)


def test_nvfp4_matches_nvidia_modelopt_bit_for_bit():
    """modelopt's NVFP4 packer runs on the CPU; its bytes are what TensorRT and NVIDIA checkpoints hold."""
    from modelopt.torch.quantization.qtensor import nvfp4_tensor as mtq

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-3, 1, 64)[:, None]  # rows over 4 decades
    w[3, :16] = 0.0  # an all-zero block
    w[5, 7] = -1e-9  # rounds to -0
    q, scale, scale_2 = mtq.NVFP4QTensor.quantize(w.clone(), 16)
    ours = NVFP4().encode(w)
    assert torch.equal(ours["weight"], q._quantized_data)
    assert torch.equal(ours["weight_scale"], scale.view(torch.uint8))
    assert ours["weight_scale_2"].item() == scale_2.item()
    assert torch.equal(NVFP4().decode(ours), q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2,
                                                             block_sizes={-1: 16}))


def test_the_c_definitions_decode_the_same_values(tmp_path):
    """csrc/quant_formats.h, compiled with the system C compiler, decodes our encodings identically."""
    import shutil
    import subprocess

    from conftest import REPO

    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is part of the build machines (gcc 12)"
    x = torch.tensor([BLOCK, [v * 0.37 for v in BLOCK]]) * 448
    f = NVFP4().encode(x)
    i8 = Int8("per_channel").encode(torch.tensor([[254.0, 1.0, -3.0], [5.0, -7.0, 0.25]]))
    arr = lambda t, c: ", ".join(c(v) for v in t.reshape(-1).tolist())  # noqa: E731
    src = tmp_path / "check.c"
    src.write_text(f"""
#include <stdio.h>
#include "quant_formats.h"
int main(void) {{
    printf("%d\\n", (int)sizeof(arvc_nvfp4_block));
    static const uint8_t codes[] = {{{arr(f["weight"], str)}}};
    static const arvc_e4m3 scales[] = {{{arr(f["weight_scale"], str)}}};
    arvc_nvfp4_tensor t = {{(const arvc_nvfp4_block *)codes, scales, {f["weight_scale_2"].item()!r}f, 2, 16}};
    for (int r = 0; r < 2; r++) for (int c = 0; c < 16; c++) printf("%.9g\\n", arvc_nvfp4_get(&t, r, c));
    static const int8_t d[] = {{{arr(i8["data"], str)}}};
    static const float s[] = {{{arr(i8["scale"], lambda v: repr(v) + "f")}}};
    arvc_int8_channel_tensor q = {{d, s, 2, 3}};
    for (int r = 0; r < 2; r++) for (int c = 0; c < 3; c++) printf("%.9g\\n", arvc_int8_get(&q, r, c));
    for (int b = 0; b < 256; b++) printf("%.9g\\n", arvc_e4m3_value((arvc_e4m3)b));
    return 0;
}}
""")
    exe = tmp_path / "check"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(REPO / "csrc"), str(src), "-o", str(exe), "-lm"],
                   check=True)
    got = [float(v) for v in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    assert got.pop(0) == FORMATS["nvfp4"].c_bytes  # the one table and the C struct agree
    want = NVFP4().decode(f).reshape(-1).tolist() + Int8("per_channel").decode(i8).reshape(-1).tolist()
    e4m3 = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    # %.9g round-trips a float32 exactly: compare as float32, bit for bit
    assert torch.equal(torch.tensor(got[:len(want)], dtype=torch.float32), torch.tensor(want, dtype=torch.float32))
    c_e4m3 = torch.tensor(got[len(want):])
    assert torch.equal(c_e4m3.isnan(), e4m3.isnan())
    assert torch.equal(c_e4m3[~e4m3.isnan()], e4m3[~e4m3.isnan()])
