"""int8 W8A8 plans against the fp32 plan, and every plan against this CPU's own GEMM peaks (issue 20).

In one run, on this machine, with ONNX Runtime's CPU provider:

1. Peaks: one [768 x 1536] @ [1536 x 8960] GEMM as fp32 MatMul, and as the Q/DQ MatMul ORT fuses into its int8
   kernel (static activation scale): the best of REPEATS runs each, in FLOP/s (int8: OP/s).
2. Per config (the shipped tiny model; ``mid``: Wan2.1-1.3B widths -- dim 1536, 12 heads, ffn 8960 -- with 2
   layers and random weights, 128x128, window 12 + sink 3) and per plan (fp32, int8 static, int8 dynamic):
   - DiT seconds per block (4 denoising calls + the cache call; median over the blocks after the first), and
     the ratio fp32 / plan (> 1: faster than fp32);
   - the DiT's matrix-product FLOPs per block (compiler/planner.py dit_call_flops, the count
     tests/test_planner.py ties to torch's FLOP counter) / that time, as a fraction of the matching peak
     (fp32 plans: the fp32 peak; W8A8 plans: the int8 peak -- their attention and unquantized GEMMs are fp32,
     so the fraction is of the best case);
   - a whole stream's frames per second (DiT and VAE overlapped, as `arvc run` runs it) and its ratio;
   - the plan's parity-gate PSNR (compiled with the gate open, so that it is recorded whatever it is).

    python bench/bench_integer_gemm.py [--configs tiny,mid] [--threads 2] [--blocks 6] [--machine cpu-2core]
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from arvc.compiler.compile import CompileOptions, compile_plan
from arvc.compiler.planner import dit_call_flops
from arvc.model.cache_geometry import CacheGeometry
from arvc.model.config import WAN_PRESETS
from arvc.model.schedule import Schedule
from arvc.runtime.plan_session import PlanSession

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right on a dark blue background"
MID = dataclasses.replace(WAN_PRESETS["wan2.1-t2v-1.3b"], num_layers=2)
GEOMETRY = CacheGeometry(3, 12, 3, 21, "relative")
SCHEDULE = Schedule((1000.0, 900.0, 750.0, 500.0))
PLANS = {"fp32": {}, "int8 static": {"precision": "int8", "activations": "static"},
         "int8 dynamic": {"precision": "int8", "activations": "dynamic"}}
PEAK_SHAPE, REPEATS = (768, 1536, 8960), 10


def gemm_peaks(threads: int) -> dict[str, float]:
    """{"fp32": FLOP/s, "int8": OP/s} of one PEAK_SHAPE GEMM on ONNX Runtime, as arvc's sessions configure it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from arvc.runtime.ort_backend import ORT_DISABLED_OPTIMIZERS

    m, k, n = PEAK_SHAPE
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scale = np.full(n, 0.01, np.float32)
    graphs = {
        "fp32": ([numpy_helper.from_array(w.astype(np.float32) * scale, "w")],
                 [helper.make_node("MatMul", ["x", "w"], ["y"])]),
        "int8": ([numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
                  numpy_helper.from_array(np.array(0.05, np.float32), "xs"), numpy_helper.from_array(np.array(0, np.int8), "xz")],
                 [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"], name="gemm")]),
    }
    x = rng.standard_normal((m, k)).astype(np.float32)
    rates = {}
    for kind, (inits, nodes) in graphs.items():
        graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("optimization.disable_specified_optimizers", ORT_DISABLED_OPTIMIZERS)
        s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        s.run(None, {"x": x})
        best = min(_timed(lambda: s.run(None, {"x": x})) for _ in range(REPEATS))
        rates[kind] = 2 * m * k * n / best
    return rates


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_mid_checkpoint(directory: Path) -> None:
    """Random weights at MID's widths, and a small random VAE (its cost is not what this measures)."""
    from arvc.checkpoints.safetensors_io import write_safetensors_atomic
    from arvc.checkpoints.state_dicts import save_dit
    from arvc.model.config import WanVAEConfig
    from arvc.model.dit import WanDiT, init_random_weights_
    from arvc.model.vae import WanVAEDecoder
    from arvc.model.vae import init_random_weights_ as init_vae_

    directory.mkdir(parents=True, exist_ok=True)
    save_dit(directory / "model.safetensors", init_random_weights_(WanDiT(MID), seed=0).state_dict(), MID)
    vae = init_vae_(WanVAEDecoder(WanVAEConfig(base_dim=8)), seed=0)
    write_safetensors_atomic(directory / "vae.safetensors", {k: v.contiguous() for k, v in vae.state_dict().items()})


def context(name: str, session: PlanSession):
    if name == "tiny":
        return PROMPT
    cfg = session.manifest.model.dit
    return np.random.default_rng(0).standard_normal((cfg.text_len // 2, cfg.text_dim)).astype(np.float32)


def dit_block_flops(session: PlanSession) -> int:
    m = session.manifest
    g = m.geometry
    nk = g.capacity_frames * m.tokens_per_frame  # steady state: the ring full
    return (len(m.schedule.timesteps) + 1) * dit_call_flops(m.model.dit, g.frames_per_block, m.tokens_per_frame,
                                                           nk)["total"]


def op_profile(plan_dir: Path, manifest, threads: int, calls: int = 5) -> dict[str, float]:
    """Share of the dit graph's time per ONNX Runtime op type (its profiler, the plan's session options; inputs
    zero, every cache row valid: the kernels' time does not depend on the values)."""
    import json

    import onnxruntime as ort

    from arvc.runtime.ort_backend import ORT_DISABLED_OPTIMIZERS

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("optimization.disable_specified_optimizers", ORT_DISABLED_OPTIMIZERS)
    so.enable_profiling = True
    so.profile_file_prefix = str(plan_dir / "ort-profile")
    s = ort.InferenceSession(str(plan_dir / manifest.stages.dit.graph), so, providers=["CPUExecutionProvider"])
    numpy_of = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
                "tensor(float16)": np.float16}
    feeds = {i.name: (np.ones if i.type == "tensor(bool)" else np.zeros)(i.shape, numpy_of[i.type])
             for i in s.get_inputs()}
    feeds["timestep"] = np.array([500.0])
    for _ in range(calls):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0.0) + e["dur"]
    total = sum(per_op.values())
    return {op: round(us / total, 3) for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])}


def bench_plan(name: str, label: str, ckpt: Path, work: Path, args, peaks: dict) -> dict:
    plan_dir = work / f"{name}-{label.replace(' ', '-')}.plan"
    opts = CompileOptions(GEOMETRY, SCHEDULE, 128, 128, 16, min_psnr=0.0, verify_blocks=4, calib_blocks=3,
                          **PLANS[label])
    manifest = compile_plan(ckpt, plan_dir, opts, log=lambda _m: None)
    session = PlanSession(plan_dir, threads=args.threads)
    ctx = context(name, session)
    gen = session.generator(seed=0)
    gen.set_prompt(session.context_for(ctx))
    times = [_timed(gen.next_block) for _ in range(args.blocks)]
    block_s = statistics.median(times[1:])
    frames = session.frames_before_block(args.blocks)
    list(session.stream(ctx, frames=frames, seed=0))
    st = session.stats
    peak = peaks["int8" if label.startswith("int8") else "fp32"]
    flops = dit_block_flops(session)
    return {"config": name, "plan": label, "dit_block_s": round(block_s, 4), "dit_block_flops": flops,
            "fraction_of_peak": round(flops / block_s / peak, 3), "stream_fps": round(frames / st.wall_s, 2),
            "frames": frames, "frame_psnr_db": manifest.verification.get("frame_psnr_db"),
            "dit_time_by_op": op_profile(plan_dir, manifest, args.threads)}


def markdown(rows: list[dict], peaks: dict, args) -> str:
    lines = [f"# int8 W8A8 vs fp32 plans, against this CPU's GEMM peaks -- {args.machine}, {time.strftime('%Y-%m-%d')}",
             "", f"CPU: {_cpu()}; {args.threads} threads; ONNX Runtime CPU provider.", "",
             f"Peaks ([{PEAK_SHAPE[0]} x {PEAK_SHAPE[1]}] @ [{PEAK_SHAPE[1]} x {PEAK_SHAPE[2]}]): fp32 MatMul "
             f"{peaks['fp32'] / 1e9:.0f} GFLOP/s, int8 Q/DQ MatMul (fused) {peaks['int8'] / 1e9:.0f} GOP/s "
             f"({peaks['int8'] / peaks['fp32']:.2f}x).", "",
             "| config | plan | DiT s/block | vs fp32 | DiT GFLOP/block | fraction of peak | stream fps | vs fp32 | gate PSNR (dB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["config"]: r for r in rows if r["plan"] == "fp32"}
    for r in rows:
        b = base[r["config"]]
        lines.append(f"| {r['config']} | {r['plan']} | {r['dit_block_s']:.3f} | {b['dit_block_s'] / r['dit_block_s']:.2f}x "
                     f"| {r['dit_block_flops'] / 1e9:.1f} | {r['fraction_of_peak']:.0%} | {r['stream_fps']:.2f} "
                     f"| {r['stream_fps'] / b['stream_fps']:.2f}x | {r['frame_psnr_db']:.1f} |")
    lines += ["", "Share of the dit graph's time per ONNX Runtime op type (its profiler; the 6 largest):", "",
              "| config | plan | ops |", "|---|---|---|"]
    for r in rows:
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(r["dit_time_by_op"].items())[:6])
        lines.append(f"| {r['config']} | {r['plan']} | {top} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    from results_io import write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="tiny,mid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    peaks = gemm_peaks(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="arvc-bench-int8-") as tmp:
        work = Path(tmp)
        for name in args.configs.split(","):
            if name == "tiny":
                ckpt = REPO / "models" / "tiny"
            elif name == "mid":
                ckpt = work / "mid"
                make_mid_checkpoint(ckpt)
            else:
                raise SystemExit(f"unknown config {name!r}; choose from tiny, mid")
            for label in PLANS:
                rows.append(bench_plan(name, label, ckpt, work, args, peaks))
                print(rows[-1], flush=True)
    text = markdown(rows, peaks, args)
    print(text)
    print(write_results(args.out, "bench_integer_gemm", args.machine, False, text, args,
                        rows + [{"peaks": peaks, "cpu": _cpu()}]))


if __name__ == "__main__":
    main()
