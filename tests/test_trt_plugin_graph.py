"""The TensorRT dit graph (arvc/graphs/lower_plugin.py) checked on a CPU: dit_trt.onnx run by onnx's
ReferenceEvaluator with Python implementations of the arvc plugin ops (torch + quant/formats.py math) must
write the same cache bytes and produce the same x0 as the plan's dit.onnx run by ONNX Runtime
(OrtBackend.run_dit), with the same feeds, over two calls (the second reads rows the first wrote)."""
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from arvc.compiler.compile import CompileError, CompileOptions, compile_plan
from arvc.graphs.lower_dit import DitShapes, build_dit_graph, build_text_graph
from arvc.graphs.lower_plugin import (ATTENTION_OP, HOST_FEEDS_KEY, PLUGIN_DOMAIN, WRITE_OP, build_dit_plugin_graph,
                                        plugin_problem, reference_decode, reference_encode, reference_ops)
from arvc.graphs.onnx_graph import ExternalWeights, save_checked
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WanConfig
from arvc.model.schedule import Schedule
from arvc.quant.kv import kv_round_trip
from arvc.runtime.manifest import Manifest
from arvc.runtime.ort_backend import OrtBackend
from arvc.runtime.plan import read_manifest, seal_manifest
from arvc.runtime.trt_backend import dit_host_feeds
from arvc.runtime.trt_graphs import derive_trt_graphs, plan_hash

from conftest import SMALL_CFG_ARGS

CFG = WanConfig(**SMALL_CFG_ARGS)


@pytest.fixture(scope="module")
def derived(small_ckpt, tmp_path_factory):
    """One plan compiled for --target tensorrt (int8 cache, absolute RoPE), its TensorRT graphs derived into a
    cache folder as the backend derives them at load -> (plan, manifest JSON, cache folder, TrtGraphs)."""
    d, _ = small_ckpt
    root = tmp_path_factory.mktemp("trt")
    out = root / "trt.plan"
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0)), 32, 32, kv_cache="int8",
                          target="tensorrt", min_psnr=0.0, verify_blocks=1)
    m = compile_plan(d, out, opts, log=lambda _m: None).to_json()
    return out, m, root / "cache", derive_trt_graphs(out, read_manifest(out), root / "cache")


@pytest.fixture(scope="module")
def trt_plan(derived, tmp_path_factory):
    """A copy of the plan with its derived dit_trt.onnx / text_trt.onnx beside its graphs; the other cases
    re-lower only the dit graphs into a copy of it (the VAE lowering is the slow part and does not depend on the
    cache)."""
    plan, m, _, graphs = derived
    work = tmp_path_factory.mktemp("trt_work") / "trt.plan"
    shutil.copytree(plan, work)
    for graph in (graphs.dit, graphs.text):
        shutil.copy(graph, work / graph.name)
    return work, m


def test_tensorrt_form_is_derived_from_the_plan_once_not_stored(derived, tmp_path):
    plan, m, cache, graphs = derived
    assert m["schema_version"] == 2 and set(m["stages"]) == {"text", "dit", "vae"}
    assert not list(plan.glob("*_trt.onnx")) and not [f for f in m["files"] if "_trt" in f]
    assert graphs.dit.parent.name.startswith(f"plan-{plan_hash(plan)[:32]}")
    # the weights are the plan's (no copy); a second load reuses the derivation
    assert graphs.weights_dir == plan.resolve()
    assert sorted(p.name for p in graphs.dit.parent.iterdir()) == ["dit_trt.onnx", "text_trt.onnx"]
    stamp = graphs.dit.stat().st_mtime_ns
    assert derive_trt_graphs(plan, read_manifest(plan), cache) == graphs and graphs.dit.stat().st_mtime_ns == stamp
    # another plan (here: the same one compiled at another time: another manifest) gets its own folder
    other = tmp_path / "other.plan"
    shutil.copytree(plan, other)
    (other / "manifest.json").write_text(seal_manifest({**m, "created": "2030-01-01T00:00:00+00:00"}))
    again = derive_trt_graphs(other, read_manifest(other), cache)
    assert again.dit.parent != graphs.dit.parent and again.weights_dir == other.resolve()


def test_tensorrt_target_derives_the_plugin_graph(trt_plan):
    plan, m = trt_plan
    model = onnx.load(str(plan / "dit_trt.onnx"), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[PLUGIN_DOMAIN] == 1
    custom = [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]
    assert [n.op_type for n in custom].count(WRITE_OP) == 2 * CFG.num_layers
    assert [n.op_type for n in custom].count(ATTENTION_OP) == CFG.num_layers
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
    assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"arvc" and attrs["format"] == 2
    assert not any(n.op_type in ("ScatterND", "Attention") and n.domain == "" and "cache" in "".join(n.output)
                   for n in model.graph.node)
    assert sum(n.op_type == "Attention" for n in model.graph.node) == CFG.num_layers  # cross-attention only
    # dit.onnx's graph inputs, except timestep [1] f64: TensorRT has no FP64, the host computes those values
    plain = onnx.load(str(plan / "dit.onnx"), load_external_data=False)
    host = [helper.make_tensor_value_info("time_sinusoid", TensorProto.FLOAT, [1, CFG.freq_dim]),
            helper.make_tensor_value_info("sigma", TensorProto.FLOAT, [1])]
    want = [x for i in plain.graph.input for x in (host if i.name == "timestep" else [i])]
    assert [(i.name, i.type) for i in model.graph.input] == [(i.name, i.type) for i in want]
    assert json.loads({p.key: p.value for p in model.metadata_props}[HOST_FEEDS_KEY]) == \
        {"freq_dim": CFG.freq_dim, "act_timesteps": []}
    assert _double_tensors(plan / "dit_trt.onnx") == [] and _double_tensors(plan / "dit.onnx") != []
    assert [o.name for o in model.graph.output] == [o.name for o in plain.graph.output]
    # in place: every cache output is a KVCacheWrite output, named after the input it aliases
    writes = {o: n for n in custom if n.op_type == WRITE_OP for o in n.output}
    for n in custom:
        if n.op_type == WRITE_OP:
            assert [o.replace("_out_", "_") for o in n.output] == list(n.input[2:])
    assert all(o.name in writes for o in model.graph.output if o.name != "x0")


@pytest.mark.parametrize("kv", ["fp32", "none"])
def test_tensorrt_target_refuses_a_cache_without_kernels(small_ckpt, tmp_path, kv):
    opts = CompileOptions(CacheGeometry(3, 6, 3), Schedule((1000.0,)), 32, 32, kv_cache=kv, target="tensorrt")
    with pytest.raises(CompileError, match="--kv-cache fp16"):
        compile_plan(small_ckpt[0], tmp_path / "x.plan", opts, log=lambda _m: None)
    assert not (tmp_path / "x.plan").exists()
    assert "own buffers" in plugin_problem("int8", "fp16") and plugin_problem("nvfp4") is None


@pytest.mark.parametrize("act, scales", [("dynamic", "per-layer"), ("static", "per-timestep")])
def test_tensorrt_target_refuses_run_time_activation_scales(act, scales):
    """TensorRT's quantize layers take build-time constant scales only: the recipe is refused up front."""
    problem = plugin_problem("int8", None, act, scales)
    assert "build-time constant" in problem and "--act-scales per-layer" in problem
    assert plugin_problem("int8", None, "static", "per-layer") is None


def test_text_trt_graph_decodes_nvfp4_with_fp4_dequantize_linear(trt_plan, tmp_path):
    """text_trt.onnx (no bit ops) gives the cross-attention K/V that text.onnx gives under ONNX Runtime."""
    import onnxruntime as ort

    plan, _ = _relower(*trt_plan, tmp_path, "int8", "absolute", weights="nvfp4")
    trt = onnx.load(str(plan / "text_trt.onnx"))
    assert not any(n.op_type in ("BitShift", "BitwiseAnd") for n in trt.graph.node)
    ctx = np.random.default_rng(0).standard_normal((1, CFG.text_len, CFG.text_dim)).astype(np.float32)
    want = ort.InferenceSession(str(plan / "text.onnx"), providers=["CPUExecutionProvider"]).run(None, {"context": ctx})
    got = ReferenceEvaluator(trt).run(None, {"context": ctx})
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(np.abs(w).max()))


PER_T = (1000.0, 500.0, 0.0)  # calibrated timesteps of the per-timestep activation scales below


def _act_table(act: str | None) -> tuple[dict, tuple]:
    """A hand-made activation table: "fp8-per-t" (static fp8, one scale per timestep of PER_T, every FFN input
    and the attention output projection) or "int8-dynamic" (per token, the q/k/v projections)."""
    import torch

    from arvc.quant.activations import ActQuant

    if act is None:
        return {}, ()
    if act == "fp8-per-t":
        scale = torch.tensor([0.02, 0.01, 0.005])
        return ({f"blocks.{i}.{layer}": ActQuant("fp8", "static", scale * (i + 1))
                 for i in range(CFG.num_layers) for layer in ("ffn.0", "ffn.2", "self_attn.o")}, PER_T)
    return {f"blocks.{i}.self_attn.{x}": ActQuant("int8", "dynamic") for i in range(CFG.num_layers) for x in "qkv"}, ()


def _relower(plan, m, tmp_path, kv: str, rope: str, weights: str = "fp32", act: str | None = None):
    """A copy of the plan with its dit graphs lowered for another cache format / RoPE mode / weight format /
    activation quantization (weights re-quantized from the plan's fp32 ones; text.onnx re-lowered with them)."""
    if (kv, rope, weights, act) == ("int8", "absolute", "fp32", None):
        return plan, m
    new = tmp_path / "p.plan"
    shutil.copytree(plan, new)
    r = m["resolution"]
    shapes = DitShapes(3, r["latent_h"], r["latent_w"], 6, rope, kv)
    if weights != "fp32":
        from arvc.checkpoints.safetensors_io import read_safetensors, write_safetensors_atomic
        from arvc.quant.weights import quantize_state_dict

        sd, _ = read_safetensors(plan / "dit.safetensors")
        stored, quantized = quantize_state_dict(sd, weights, ())
        write_safetensors_atomic(new / "dit.safetensors", stored)
    formats = {} if weights == "fp32" else {n.rsplit(".weight", 1)[0]: weights for n in quantized}
    w = ExternalWeights(new / "dit.safetensors", formats)
    table, steps = _act_table(act)
    if weights != "fp32":
        save_checked(build_text_graph(CFG, w), new / "text.onnx")
        save_checked(build_text_graph(CFG, w, fp4_weights="qdq"), new / "text_trt.onnx")
    save_checked(build_dit_graph(CFG, shapes, w, table, steps), new / "dit.onnx")
    save_checked(build_dit_plugin_graph(CFG, shapes, w, table, steps), new / "dit_trt.onnx")
    m = json.loads(json.dumps(m))
    m["recipe"]["kv_cache"], m["geometry"]["rope"], m["recipe"]["weights"] = kv, rope, weights
    return new, m


def _double_tensors(path) -> list[str]:
    """Every DOUBLE in a graph: inputs, outputs, initializers, value_info after shape inference, Cast targets,
    tensor attributes (the arvc plugin ops have no shape inference; their outputs stay untyped there)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    g, D = model.graph, TensorProto.DOUBLE
    found = [f"value {v.name}" for v in (*g.input, *g.output, *g.value_info) if v.type.tensor_type.elem_type == D]
    found += [f"initializer {t.name}" for t in g.initializer if t.data_type == D]
    for n in g.node:
        for a in n.attribute:
            if (n.op_type == "Cast" and a.name == "to" and a.i == D) or (a.HasField("t") and a.t.data_type == D):
                found.append(f"{n.op_type} {n.name or n.output[0]}")
    return found


def _check_standard_qdq(path, weights: str, act: str | None) -> None:
    """dit_trt.onnx: only standard-domain ops besides the arvc plugins; int8/fp8 weights are
    DequantizeLinear(weight, per-channel scale, axis=0), NVFP4 weights FP4 DequantizeLinear, activations
    QuantizeLinear -> DequantizeLinear in the standard domain (fp8: E4M3FN zero point, saturate); per-timestep
    scales picked by Gather on the act_timestep_index input (no ArgMin, no bit ops)."""
    model = onnx.load(str(path), load_external_data=False)
    nodes, inits = model.graph.node, {t.name: t for t in model.graph.initializer}
    assert {n.domain for n in nodes} <= {"", PLUGIN_DOMAIN}
    assert not any(n.op_type in ("ArgMin", "BitShift", "BitwiseAnd") for n in nodes)
    dq_of = {n.input[0]: n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    stored_type = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN, "nvfp4": TensorProto.FLOAT4E2M1}
    weight_dq = [n for w, n in dq_of.items() if w.endswith(".weight")]
    assert len(weight_dq) == (0 if weights == "fp32" else 8 * CFG.num_layers)
    for n in weight_dq:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert inits[n.input[0]].data_type == stored_type[weights]
        assert attrs == ({"axis": 0} if weights != "nvfp4" else {"axis": 1, "block_size": 16})
    table, _ = _act_table(act)
    q = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert len(q) == len(table)
    inputs = {i.name: i for i in model.graph.input}
    assert ("act_timestep_index" in inputs) == (act == "fp8-per-t")
    if act == "fp8-per-t":
        t = inputs["act_timestep_index"].type.tensor_type
        assert t.elem_type == TensorProto.INT32 and len(t.shape.dim) == 0
    for n in q:
        zp = inits[n.input[2]]
        assert zp.data_type == (TensorProto.FLOAT8E4M3FN if act == "fp8-per-t" else TensorProto.INT8)
        consumers = [c for c in nodes if n.output[0] in c.input]
        assert [c.op_type for c in consumers] == ["DequantizeLinear"] and list(consumers[0].input[1:]) == list(n.input[1:])
        if act == "fp8-per-t":
            assert {a.name: a.i for a in n.attribute} == {"saturate": 1}
            scale = next(c for c in nodes if n.input[1] in c.output)
            assert scale.op_type == "Gather" and scale.input[1] == "act_timestep_index"


def _feeds(rng, m, call: int, rope: str) -> dict:
    r = m["resolution"]
    T, N, Nk, half = r["tokens_per_frame"], r["tokens_per_block"], r["cache_tokens"], CFG.head_dim // 2
    feeds = {"latents": rng.standard_normal((1, 16, 3, r["latent_h"], r["latent_w"])).astype(np.float32),
             "timestep": np.array([937.5 if call == 0 else 0.0]),
             "write_index": (np.arange(N) + call * N)[:, None].astype(np.int64),  # block `call` -> slots 3c..3c+2
             "key_valid": np.arange(Nk) < (call + 1) * N}
    for name, rows in (("q", N), ("k", Nk)) if rope == "relative" else (("q", N),):
        ang = rng.uniform(-3, 3, (1, rows, half)).astype(np.float32)
        feeds[f"rope_{name}_cos"], feeds[f"rope_{name}_sin"] = np.cos(ang), np.sin(ang)
    assert T * 3 == N
    return feeds


@pytest.mark.parametrize("kv,rope,weights,act", [
    ("int8", "absolute", "fp32", None), ("fp8", "relative", "fp32", None), ("nvfp4", "absolute", "fp32", None),
    ("nvfp4", "relative", "fp32", None), ("fp16", "relative", "fp32", None),
    ("int8", "absolute", "nvfp4", None), ("fp8", "relative", "fp8", "fp8-per-t"),
    ("nvfp4", "absolute", "int8", "int8-dynamic")])
def test_plugin_graph_matches_the_ort_plan(trt_plan, tmp_path, kv, rope, weights, act):
    """Three runs of the same two calls: dit_trt.onnx and dit.onnx under onnx's ReferenceEvaluator (identical
    numpy arithmetic up to layer 0's cache ops, so layer 0's cache bytes must be EXACTLY equal; later layers
    see attention outputs that differ in the last bits (torch vs onnx's Attention), so there: scales to 1e-5
    relative, decoded rows to one quantization step; x0 within 1e-5 of its max), and dit.onnx under ONNX Runtime through OrtBackend.run_dit (in-place buffers): x0 within 1e-4 of its
    max. Against ORT the cache bytes are not compared exactly: ORT's fp32 GEMMs differ from numpy's in the last
    bit, which moves a per-head scale by an ulp and can flip a code at a rounding boundary; there the scales
    must agree to 1e-5 relative and the decoded rows to one quantization step.
    dit_trt.onnx gets dit_host_feeds(t) (time_sinusoid, sigma, act_timestep_index) where dit.onnx gets timestep;
    the weight-quantized cases decode NVFP4 weights with FP4 DequantizeLinear there and bit ops in dit.onnx."""
    plan, m = _relower(*trt_plan, tmp_path, kv, rope, weights, act)
    assert _double_tensors(plan / "dit_trt.onnx") == []
    host = json.loads({p.key: p.value for p in onnx.load(str(plan / "dit_trt.onnx"), load_external_data=False)
                       .metadata_props}[HOST_FEEDS_KEY])
    assert host == {"freq_dim": CFG.freq_dim, "act_timesteps": list(PER_T) if act == "fp8-per-t" else []}
    _check_standard_qdq(plan / "dit_trt.onnx", weights, act)
    ort = OrtBackend(plan, Manifest.from_json(m), threads=1)
    plugin = ReferenceEvaluator(onnx.load(str(plan / "dit_trt.onnx")), new_ops=reference_ops())
    plain = ReferenceEvaluator(onnx.load(str(plan / "dit.onnx")))
    rng = np.random.default_rng(0)
    cross = ort.cross_kv(rng.standard_normal((1, CFG.text_len, CFG.text_dim)).astype(np.float32))
    ort.bind_cross(cross)
    cache_inputs = [i.name for i in plugin.proto_.graph.input if "cache" in i.name or "scale" in i.name]
    assert len(cache_inputs) == len(ort.kv_arrays)
    states = {r: {n: np.zeros_like(a) for n, a in zip(cache_inputs, ort.kv_arrays)} for r in ("plugin", "plain")}
    out_name = {n: n.rsplit("_", 1)[0] + "_out_" + n.rsplit("_", 1)[1] for n in cache_inputs}
    for call in range(2):
        feeds = _feeds(rng, m, call, rope)
        x0_ort = ort.run_dit(feeds)
        x0 = {}
        trt_feeds = {k: v for k, v in feeds.items() if k != "timestep"} | \
            dit_host_feeds(float(feeds["timestep"][0]), host["freq_dim"], host["act_timesteps"])
        for r, ev, f in (("plugin", plugin, trt_feeds), ("plain", plain, feeds)):
            got = dict(zip([o.name for o in ev.proto_.graph.output],
                           ev.run(None, {**f, **{n: v.numpy() for n, v in cross}, **states[r]})))
            states[r], x0[r] = {n: got[out_name[n]] for n in cache_inputs}, got["x0"]
        peak = np.abs(x0_ort).max()
        assert np.abs(x0["plugin"] - x0["plain"]).max() <= 1e-5 * peak, call
        assert np.abs(x0["plugin"] - x0_ort).max() <= 1e-4 * peak, call
        for n, a in zip(cache_inputs, ort.kv_arrays):
            mine = states["plugin"][n]
            assert mine.dtype == a.dtype
            if n.endswith("_0"):  # layer 0's K/V rows are computed by the same numpy ops in both graphs
                assert mine.tobytes() == states["plain"][n].tobytes(), (call, n)
            if n.split("_")[1] == "scale":
                np.testing.assert_allclose(mine, a, rtol=1e-5, atol=0)
                np.testing.assert_allclose(mine, states["plain"][n], rtol=1e-5, atol=0)
        for layer in range(CFG.num_layers):
            for kind in ("k", "v"):
                names = [n for n in cache_inputs if n.startswith(f"{kind}_") and n.endswith(f"_{layer}")]
                mine = reference_decode(kv, [states["plugin"][n] for n in names], CFG.num_heads, CFG.head_dim)
                for other in ([ort.kv_arrays[cache_inputs.index(n)] for n in names],
                              [states["plain"][n] for n in names]):
                    theirs = reference_decode(kv, other, CFG.num_heads, CFG.head_dim)
                    step = theirs.abs().amax(dim=-1, keepdim=True) / {"fp16": 1e3, "int8": 127, "fp8": 8, "nvfp4": 2}[kv]
                    assert bool(((mine - theirs).abs() <= step + 1e-12).all()), (call, kind, layer)
        rows = feeds["write_index"][:, 0]
        assert np.any(ort.kv_arrays[0][rows] != 0) and np.all(ort.kv_arrays[0][(call + 1) * len(rows):] == 0)


def test_reference_encode_is_quant_kv_round_trip():
    """The reference plugin's encoder stores what quant/kv.py's round trip returns (decode(encode(x)))."""
    import torch

    x = torch.randn(5, CFG.dim) * 3
    x[1] = 0
    for fmt in ("fp16", "int8", "fp8", "nvfp4"):
        parts = reference_encode(fmt, x.numpy(), CFG.num_heads)
        back = reference_decode(fmt, parts, CFG.num_heads, CFG.head_dim)
        want = kv_round_trip(x.reshape(5, CFG.num_heads, CFG.head_dim), fmt)
        assert torch.equal(back, want), fmt


@pytest.mark.parametrize("kv", ["fp16", "int8", "fp8", "nvfp4"])
def test_reference_write_op_stores_the_bytes_of_the_graph_encoders(kv):
    """KVCacheWrite's reference vs arvc/graphs/lower_kv.py's standard-op encoders on the same rows: exact bytes
    (both reproduce quant/formats.py; the CUDA kernel is tested against the same definition in csrc/tests)."""
    from onnx import TensorProto, helper

    from arvc.graphs import lower_kv
    from arvc.graphs.onnx_graph import GraphBuilder

    g = GraphBuilder("w")
    n, nk, d, h = 6, 10, CFG.dim, CFG.num_heads
    x = g.input("x", TensorProto.FLOAT, [n, d])
    idx = g.input("idx", TensorProto.INT64, [n, 1])
    bufs = lower_kv.cache_inputs(g, kv, nk, d, h, "k", 0)
    lower_kv.write_and_read(g, kv, bufs, idx, x, h, nk, d)
    ref = ReferenceEvaluator(g.model())
    rng = np.random.default_rng(1)
    xs = (rng.standard_normal((n, d)) * rng.uniform(0.01, 50, (n, 1))).astype(np.float32)
    xs[2] = 0
    rows = np.array([7, 0, 3, 9, 1, 5])
    init = {b: np.zeros(i.type.tensor_type.shape.dim[1].dim_value and
                        (nk, i.type.tensor_type.shape.dim[1].dim_value),
                        helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
            for b, i in ((i.name, i) for i in g.inputs if i.name in bufs.values())}
    outs = dict(zip([o.name for o in g.outputs], ref.run(None, {"x": xs, "idx": rows[:, None], **init})))
    node = helper.make_node(WRITE_OP, ["x", "r", *bufs.values()], [f"o{i}" for i in range(len(bufs))],
                            domain=PLUGIN_DOMAIN, format={"fp16": 1, "int8": 2, "fp8": 3, "nvfp4": 4}[kv], heads=h,
                            head_dim=d // h, plugin_version="1", plugin_namespace="arvc")
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, d]),
           helper.make_tensor_value_info("r", TensorProto.INT32, [n])] + [i for i in g.inputs if i.name in bufs.values()]
    outs_vi = [helper.make_tensor_value_info(f"o{i}", TensorProto.UNDEFINED, None) for i in range(len(bufs))]
    m = helper.make_model(helper.make_graph([node], "w", ins, outs_vi),
                          opset_imports=[helper.make_opsetid("", 23), helper.make_opsetid(PLUGIN_DOMAIN, 1)])
    mine = ReferenceEvaluator(m, new_ops=reference_ops()).run(
        None, {"x": xs, "r": rows.astype(np.int32), **{b: init[b] for b in bufs.values()}})
    for part, got in zip(bufs.values(), mine):
        want = outs[part.replace("_0", "_out_0")]
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), part


def _subgraph(model, outputs: list[str]):
    """The nodes of ``model`` that ``outputs`` depend on, as a model of their own (inputs: the graph inputs they
    read; initializers as in the model, external data included when loaded)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input}
    nodes, seen, stack = [], set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in seen or name in inits or name in graph_inputs or not name:
            continue
        seen.add(name)
        node = producer[name]
        if node not in nodes:
            nodes.append(node)
            stack.extend(node.input)
    used = {i for n in nodes for i in n.input}
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    ins, consts = [graph_inputs[i] for i in graph_inputs if i in used], [inits[i] for i in inits if i in used]

    def make(outs):
        return helper.make_model(helper.make_graph(nodes, "sub", ins, outs, consts),
                                 opset_imports=list(model.opset_import), ir_version=model.ir_version)

    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(make([])).graph.value_info}  # ORT wants types
    return make([typed.get(o) or helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs])


def test_host_feeds_are_the_ort_graph_f64_values(trt_plan, tmp_path):
    """dit_host_feeds(t) against the f64 ops of dit.onnx (the sinusoid Cast, the sigma Cast, the per-timestep
    scale ArgMin), run by ONNX Runtime and by onnx's reference: identical bits, ties to the first timestep."""
    import onnxruntime as ort

    plan, _ = _relower(*trt_plan, tmp_path, "int8", "absolute", act="fp8-per-t")
    model = onnx.load(str(plan / "dit.onnx"), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    casts = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] in producer]
    sinusoid = next(n.output[0] for n in casts if producer[n.input[0]].op_type == "Concat")
    sigma = next(n.output[0] for n in casts if producer[n.input[0]].op_type == "Div")
    argmin = next(n.output[0] for n in model.graph.node if n.op_type == "ArgMin")
    sub = _subgraph(model, [sinusoid, sigma, argmin])
    assert [i.name for i in sub.graph.input] == ["timestep"]
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(sub)
    for t in (1000.0, 999.9, 937.5, 750.0, 500.0, 250.0, 250.3, 17.0, 1.0, 0.5, 0.0):
        mine = dit_host_feeds(t, CFG.freq_dim, PER_T)
        assert mine["time_sinusoid"].dtype == np.float32 and mine["time_sinusoid"].shape == (1, CFG.freq_dim)
        assert mine["sigma"].dtype == np.float32 and mine["sigma"].shape == (1,)
        assert mine["act_timestep_index"].dtype == np.int32 and mine["act_timestep_index"].shape == ()
        for run in (lambda f: session.run(None, f), lambda f: reference.run(None, f)):
            s, g, i = run({"timestep": np.array([t], np.float64)})
            assert s.tobytes() == mine["time_sinusoid"].tobytes(), t
            assert g.dtype == np.float32 and g.tobytes() == mine["sigma"].tobytes(), t
            assert int(i) == int(mine["act_timestep_index"]), t
    assert [int(dit_host_feeds(t, CFG.freq_dim, PER_T)["act_timestep_index"]) for t in (750.0, 250.0)] == [0, 1]
    assert set(dit_host_feeds(1.0, CFG.freq_dim)) == {"time_sinusoid", "sigma"}


def _spec_fp4_decode(packed: np.ndarray, block_scale: np.ndarray, scale_2: np.ndarray) -> np.ndarray:
    """NVFP4 from the ONNX spec's definitions alone (not quant/formats.py, not onnx.reference): 4-bit elements
    two per byte, the first in the low nibble; FLOAT4E2M1 = sign bit 3, exponent bits 2-1 (bias 1), mantissa
    bit 0; FLOAT8E4M3FN = sign, 4 exponent bits (bias 7), 3 mantissa bits, 0x7f/0xff NaN; DequantizeLinear
    y = x * scale in fp32 with the block scale = DequantizeLinear(e4m3, scale_2)."""
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.int64)
    e, m = (codes >> 1) & 3, codes & 1
    mag = np.where(e == 0, m * 0.5, 2.0 ** (e - 1) * (1 + m / 2))
    x = np.where(codes & 8, -mag, mag).astype(np.float32)
    b = block_scale.astype(np.int64)
    be, bm = (b >> 3) & 15, b & 7
    bmag = np.where(be == 0, bm / 8 * 2.0 ** -6, 2.0 ** (be - 7) * (1 + bm / 8))
    bmag = np.where((b & 127) == 127, np.nan, bmag)
    s = (np.where(b & 128, -bmag, bmag).astype(np.float32) * np.float32(scale_2)).astype(np.float32)
    return (x.reshape(x.shape[0], -1, 16) * s[..., None]).reshape(x.shape).astype(np.float32)


def test_nvfp4_weights_are_fp4_dequantize_linear_of_the_same_bytes(trt_plan, tmp_path):
    """In dit_trt.onnx every NVFP4 weight is DequantizeLinear(FLOAT4E2M1 [out, in] initializer at dit.onnx's own
    external bytes, DequantizeLinear(E4M3 [out, in/16], scale_2 f32), axis=1, block_size=16); decoded by onnx's
    reference evaluator, by a numpy decoder written from the ONNX spec, by ONNX Runtime on dit.onnx's bit-op
    decode and by quant/weights.dequantize_weight: the same fp32 bits, for every weight of a real plan."""
    import onnxruntime as ort
    import torch

    from arvc.checkpoints.safetensors_io import read_safetensors
    from arvc.quant.weights import dequantize_weight

    plan, _ = _relower(*trt_plan, tmp_path, "int8", "absolute", weights="nvfp4")
    trt = onnx.load(str(plan / "dit_trt.onnx"))
    plain = onnx.load(str(plan / "dit.onnx"), load_external_data=False)
    plain_loaded = onnx.load(str(plan / "dit.onnx"))
    stored, _ = read_safetensors(plan / "dit.safetensors")
    inits = {t.name: t for t in onnx.load(str(plan / "dit_trt.onnx"), load_external_data=False).graph.initializer}
    plain_inits = {t.name: t for t in plain.graph.initializer}
    producer = {o: n for n in trt.graph.node for o in n.output}
    fp4 = [n for n in trt.graph.node if n.op_type == "DequantizeLinear" and
           inits.get(n.input[0]) is not None and inits[n.input[0]].data_type == TensorProto.FLOAT4E2M1]
    quantized = sorted(k for k, v in stored.items() if v.dtype == torch.uint8 and k + "_scale_2" in stored
                       and ".cross_attn.k." not in k and ".cross_attn.v." not in k)  # those two: text.onnx
    assert len(quantized) == 8 * CFG.num_layers and sorted(n.input[0] for n in fp4) == quantized
    assert not any(n.op_type in ("BitShift", "BitwiseAnd", "ArgMin") for n in trt.graph.node)
    gemm_b = {n.input[1] for n in plain.graph.node if n.op_type == "Gemm"}
    for node in fp4:
        name = node.input[0]
        out, half = stored[name].shape
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"axis": 1, "block_size": 16} and len(node.input) == 2
        w = inits[name]
        assert list(w.dims) == [out, 2 * half] and w.data_location == TensorProto.EXTERNAL
        assert list(w.external_data) == list(plain_inits[name].external_data)  # location, offset, length
        inner = producer[node.input[1]]
        assert inner.op_type == "DequantizeLinear" and list(inner.input) == [f"{name}_scale", f"{name}_scale_2"]
        assert inits[f"{name}_scale"].data_type == TensorProto.FLOAT8E4M3FN
        assert list(inits[f"{name}_scale"].dims) == [out, 2 * half // 16]
        assert inits[f"{name}_scale_2"].data_type == TensorProto.FLOAT
        want = dequantize_weight({"": stored[name], "_scale": stored[name + "_scale"],
                                  "_scale_2": stored[name + "_scale_2"]}, "nvfp4").numpy()
        (got,) = ReferenceEvaluator(_subgraph(trt, [node.output[0]])).run(None, {})
        assert got.dtype == np.float32 and got.view(np.uint32).tobytes() == want.view(np.uint32).tobytes(), name
        spec = _spec_fp4_decode(stored[name].numpy(), stored[name + "_scale"].view(torch.uint8).numpy(),
                                stored[name + "_scale_2"].numpy())
        assert spec.tobytes() == want.tobytes(), name
        # dit.onnx: the Gemm's weight operand (the bit-op decode), run by ONNX Runtime
        (decoded,) = [b for b in gemm_b if _subgraph_reads(plain, b, name)]
        sub = _subgraph(plain_loaded, [decoded])
        (ort_w,) = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
        assert ort_w.tobytes() == want.tobytes(), name


def _subgraph_reads(model, value: str, initializer: str) -> bool:
    sub = _subgraph(model, [value])
    return any(initializer == i for n in sub.graph.node for i in n.input)
