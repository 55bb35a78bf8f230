"""The KV-cache encoders in the graph write exactly the bytes quant/formats.py defines."""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from arvc.graphs import lower_kv
from arvc.graphs.onnx_graph import GraphBuilder
from arvc.quant.formats import NVFP4, Fp8E4M3, Int8
from arvc.quant.kv import kv_parts, kv_row_bytes, kv_round_trip


def _encode_in_graph(fmt: str, x: np.ndarray, heads: int) -> dict:
    g = GraphBuilder("enc")
    n, dim = x.shape
    inp = g.input("x", TensorProto.FLOAT, [n, dim])
    parts = lower_kv._encode(g, fmt, inp, heads, dim)
    for name, value in parts.items():
        part = next(p for p in kv_parts(fmt, dim, heads) if p.name == name)
        g.output(value, name, lower_kv.NP_TO_ONNX[part.dtype], [n, part.width])
    sess = ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(parts, sess.run(list(parts), {"x": x})))


def test_fp8_encoder_writes_every_e4m3_code_like_torch():
    codes = np.array([c for c in range(256) if c & 0x7F != 0x7F], np.uint8)  # all but the NaNs
    values = torch.from_numpy(codes).view(torch.float8_e4m3fn).float()
    # one head of 254 values whose amax is 448 -> scale 1, so each value must map to its own code
    x = values.reshape(1, -1).numpy()
    got = _encode_in_graph("fp8", x, heads=1)
    want = Fp8E4M3("per_token").encode(torch.from_numpy(x))["data"].numpy()
    assert np.array_equal(got["cache"], want)
    assert np.array_equal(got["cache"][0][values.numpy() != 0], codes[values.numpy() != 0])


@pytest.mark.parametrize("fmt", ["int8", "fp8", "nvfp4"])
def test_graph_encoder_matches_the_python_format_bit_for_bit(fmt):
    g = torch.Generator().manual_seed(0)
    heads, dim = 4, 128
    x = torch.randn(37, dim, generator=g) * torch.logspace(-3, 2, 37).unsqueeze(1)
    x[3] = 0.0  # an all-zero row: scale 1, codes 0
    x[5, :32] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75] * 4) * 0.01  # E2M1 ties
    got = _encode_in_graph(fmt, x.numpy(), heads)
    xh = x.reshape(37, heads, dim // heads)
    if fmt == "nvfp4":
        f = NVFP4("per_token").encode(xh)
        want = {"cache": f["weight"].reshape(37, -1), "block_scale": f["weight_scale"].reshape(37, -1),
                "scale": f["weight_scale_2"]}
    else:
        f = (Int8 if fmt == "int8" else Fp8E4M3)("per_token").encode(xh)
        want = {"cache": f["data"].reshape(37, -1), "scale": f["scale"]}
    assert set(got) == set(want)
    for part, value in want.items():
        assert np.array_equal(got[part], value.numpy().view(got[part].dtype)), part
    # and the reference round trip decodes exactly those bytes
    assert torch.equal(kv_round_trip(xh, fmt), {"int8": Int8, "fp8": Fp8E4M3, "nvfp4": NVFP4}[fmt]("per_token")
                       .decode(f).reshape(xh.shape))


def test_bytes_per_cached_row_are_what_the_formats_promise():
    dim, heads = 1536, 12  # Wan2.1-1.3B
    fp16 = kv_row_bytes("fp16", dim, heads)
    assert fp16 == 2 * dim
    assert kv_row_bytes("int8", dim, heads) / fp16 == pytest.approx(0.5156, abs=1e-4)  # + 12 fp32 scales
    assert kv_row_bytes("fp8", dim, heads) == kv_row_bytes("int8", dim, heads)
    assert kv_row_bytes("nvfp4", dim, heads) / fp16 == pytest.approx(0.2969, abs=1e-4)  # 4.5 bits + scale_2
    with pytest.raises(ValueError, match="head_dim 24 is not a multiple of 16"):
        kv_parts("nvfp4", 96, 4)
    with pytest.raises(ValueError, match="unknown"):
        kv_parts("int4", 96, 4)
