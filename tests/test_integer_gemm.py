"""W8A8 plans run their quantized linears as integer GEMMs on ONNX Runtime's CPU provider (issue 20), in the
Q/DQ form TensorRT fuses too (arvc/graphs/qdq_rules.py, docs/integer-gemm.md)."""
import onnx
import pytest

from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.graphs.qdq_rules import placement_problems
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.schedule import Schedule
from arvc.runtime.ort_backend import optimized_graph
from arvc.runtime.plan import read_manifest

GEOM, SCHED = CacheGeometry(3, 6, 3), Schedule((1000.0, 500.0))
# ONNX Runtime's CPU kernels that multiply integer codes (contrib ops included)
INTEGER_GEMMS = {"MatMulIntegerToFloat", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul"}
FLOAT_GEMMS = {"Gemm", "MatMul", "FusedGemm", "FusedMatMul"}


@pytest.fixture(scope="module", params=[("static", "per-layer"), ("static", "per-timestep"), ("dynamic", "per-layer")],
                ids=lambda p: "-".join(p))
def w8a8_plan(request, small_ckpt, tmp_path_factory):
    mode, scales = request.param
    d, _ = small_ckpt
    opts = CompileOptions(GEOM, SCHED, 32, 32, precision="int8", activations=mode, act_scales=scales, min_psnr=0.0,
                          verify_blocks=2, calib_blocks=2)
    plan = tmp_path_factory.mktemp("w8a8") / "a.plan"
    compile_plan(d, plan, opts, log=lambda _m: None)
    return plan


def _w8a8_layers(manifest) -> list[str]:
    r = manifest.recipe
    return [layer for layer in r.quantized_activations if r.weight_formats.get(layer) == "int8"]


def test_every_w8a8_linear_runs_an_integer_gemm_in_onnx_runtimes_optimized_graph(w8a8_plan):
    manifest = read_manifest(w8a8_plan)
    layers = _w8a8_layers(manifest)
    assert len(layers) == manifest.model.dit.num_layers * 8  # q k v o, cross q o, ffn 0 2
    kernels = {n.name: n.op_type for n in optimized_graph(w8a8_plan / manifest.stages.dit.graph).graph.node}
    floating = {layer: kernels.get(layer) for layer in layers if kernels.get(layer) not in INTEGER_GEMMS}
    assert not floating, f"quantized layers still on a floating-point GEMM (or gone): {floating}"
    # and the unquantized GEMMs stay what they were: nothing else was renamed into an integer kernel
    assert {k for n, k in kernels.items() if n not in layers} & INTEGER_GEMMS == set()


def test_the_w8a8_graph_keeps_tensorrts_qdq_placement(w8a8_plan):
    manifest = read_manifest(w8a8_plan)
    model = onnx.load(str(w8a8_plan / manifest.stages.dit.graph), load_external_data=False)
    assert placement_problems(model, _w8a8_layers(manifest)) == []


def test_the_placement_check_names_what_breaks_it(w8a8_plan):
    """The checker itself: a weight scale made per-tensor, an activation zero point made nonzero, and a GEMM that
    reads the fp32 input are each reported."""
    from onnx import numpy_helper
    import numpy as np

    manifest = read_manifest(w8a8_plan)
    layer = "blocks.0.ffn.0"
    model = onnx.load(str(w8a8_plan / manifest.stages.dit.graph), load_external_data=False)
    g = model.graph
    gemm = next(n for n in g.node if n.name == layer)
    producer = {o: n for n in g.node for o in n.output}
    act_dq = producer[gemm.input[0]]
    assert placement_problems(model, [layer]) == []
    zp = next(t for t in g.initializer if t.name == act_dq.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.ones(tuple(zp.dims), np.int8), zp.name))
    assert any("zero point is not an int8 0" in p for p in placement_problems(model, [layer]))
    gemm.input[0] = producer[act_dq.input[0]].input[0]  # the Q's input: the GEMM reads fp32
    assert placement_problems(model, [layer]) == [f"{layer}: its activation input does not come from a DequantizeLinear"]


def test_the_reported_execution_is_what_onnx_runtime_runs(w8a8_plan):
    """runtime/execution.py's claim for the ORT CPU backend (printed by inspect, run and profile) against ORT's
    own optimized graph: W8A8 layers native, and emulated once exact_qdq turns ORT's Q/DQ fusion off."""
    from arvc.runtime.execution import EMULATED, NATIVE, ort_cpu_execution

    manifest = read_manifest(w8a8_plan)
    layers = _w8a8_layers(manifest)
    graph = w8a8_plan / manifest.stages.dit.graph
    for exact, verdict in ((False, NATIVE), (True, EMULATED)):
        dit = ort_cpu_execution(manifest, exact_qdq=exact)["dit"]
        integer = [n.name for n in optimized_graph(graph, exact_qdq=exact).graph.node if n.op_type in INTEGER_GEMMS]
        assert dit.verdict == verdict and sorted(integer) == (sorted(layers) if verdict == NATIVE else [])
        assert (f"{len(layers)} linears as int8 x int8 integer GEMMs" in dit.detail) == (verdict == NATIVE)
    # the cross-attention K/V (text stage, once per prompt) keep int8 weights but fp32 inputs: weight-only
    assert ort_cpu_execution(manifest)["text"].verdict == EMULATED
