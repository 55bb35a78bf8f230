"""Quantized parity that holds on any x86-64 CPU: a plan against the PyTorch reference that emulates the
same quantization, compared code by code (docs/testing.md, "Quantized parity").

Why not a bound on the latents of a free-running rollout: ORT's and torch's fp32 kernels (picked per CPU:
AVX2, AVX-512, VNNI, ...) sum in different orders, so a value entering a quantizer differs between the
two by fp32 noise (measured <= 5e-7 of its row's amax). Where such a value lies within that noise of a
rounding boundary, the two store adjacent codes: a *flip*, one quantization step, not an error of the
plan. But a rollout amplifies it. On the int8 static per-layer plan, one flip in ``blocks.0.ffn.0`` at
dit call 10 became 9 flips in ``ffn.2`` of the same call, 1 048 in the next call and 2 853 in all: latents
0.023 apart (max abs). A single flip injected at call 0 instead puts the free rollouts 57 dB (latents) / 50 dB
(frames) apart, as far as the whole quantization is from fp32 (57 / 49 dB), i.e. as far as a real bug
(a 2x scale on one layer: 48 dB frames). Whether and when the first flip happens depends on the CPU, so
no bound on a free rollout is both tight and portable.

What ``assert_quantized_parity`` asserts instead:

1. Codes. The plan runs with every quantizer's output exposed (each activation ``QuantizeLinear``'s
   codes; the KV-cache rows each dit call writes, read from the bound buffers). The reference runs the
   same rollout and at every quantizer takes its own pre-rounding value ``y = x / scale``:
   - *excess*: each plan code must be a rounding of the reference's value moved by at most ``RHO``
     (1e-4) of the amax of its row (the scale's group). Agreeing codes have excess 0; a flip's is at
     most the fp32 noise (<= 5e-7 measured, all formats, torch's AVX-512 / AVX2 / scalar kernels). A
     wrong scale (x2: 0.5; x1.01 on one layer: 0.01), truncation (half an int8 step: 4e-3), a wrong
     layout or a quantizer on the wrong tensor exceed it;
   - *steps*: plan and reference codes are equal or adjacent wherever a step is coarser than the noise
     (``RHO``; finer steps, near zero in fp16 / E4M3, are left to the excess);
   - *share*: flipped codes / all codes <= ``MAX_FLIP_SHARE`` of the format. A flip needs a value within
     the noise of a boundary, so the share is about mean(noise / step): <= 6.1e-5 measured for 8- and
     4-bit codes (bound 1e-3), 3.4e-3 for fp16 whose steps are 2^-11 of the value (bound 5e-2). This
     catches a systematic rounding difference that stays within the excess (the reference truncating:
     49 % of codes);
   - fp32 scales stored beside the codes (KV cache, per token and head) agree to ``SCALE_RTOL`` (1e-4).
2. Follow. Where a code flipped, the reference takes the plan's code (certified by 1), so both make
   identical rounding decisions from then on: a flip cannot cascade, and plan and reference differ by
   fp32 noise only. The latents are then held to the fp32 plan's bounds (max abs <= 1e-4, measured
   <= 2.4e-6; frames >= 60 dB, measured >= 126 dB). Without a flip the reference *is* the plain
   emulation (quant/activations.py, quant/kv.py) bit for bit.
3. The exposed outputs change nothing: the instrumented plan's latents equal the plain plan's exactly.

A rounding-mode bug (ties away from zero instead of to even) changes codes only at exact ties, which
are as rare in a rollout as in any fp32 data (none occurred in the int8 activations here): there it
is indistinguishable from a flip. ``test_graph_qdq_equals_the_torch_emulation_bit_for_bit`` plants
exact ties for the activation Q/DQ; tests/test_lower_kv.py checks the KV encoders bit for bit (E2M1 tie
values included, no exact int8 / E4M3 ties).
"""
from __future__ import annotations

import shutil
from unittest import mock
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from arvc.compiler.sensitivity import roll
from arvc.compiler.verify import decode_plan, decode_reference, psnr
from arvc.quant.activations import dynamic_scale, quantize_input, timestep_index, tracking_timestep
from arvc.quant.format_table import E2M1_VALUES, NVFP4_BLOCK
from arvc.quant.formats import NVFP4, Fp8E4M3, Int8
from arvc.quant.kv import kv_parts
from arvc.reference.causal import CausalGenerator
from arvc.runtime.plan_session import PlanSession
from arvc.runtime.prompts import verification_prompts

# Measured over the 10 parametrizations of the two test files with torch's AVX-512, AVX2 and scalar kernels
# (docs/testing.md). A plan code must be a rounding of the reference's value moved by at most RHO x the amax
# of its row (the scale's group: a token, or a token's head). fp32 noise between the two: <= 5.0e-7 (RHO
# leaves 200x); a real bug is >= 4e-3 (half an int8 step of a row whose amax is 127 steps; a wrong scale ~0.5).
RHO = 1e-4
# Flipped codes / all codes, per quantizer kind. A flip needs a value within the noise (|y_plan - y_ref|)
# of a rounding boundary, so the share is about mean(noise / step): ~1e-5 for 8- and 4-bit codes (steps
# >= 1/127 of the row's amax for int8, 2^-4 of the value for normal E4M3), measured <= 6.1e-5 (16x); fp16
# steps are 2^-11 of the value, so fp32 noise flips ~1e-3 of them (measured <= 3.4e-3, 15x).
MAX_FLIP_SHARE = {"int8": 1e-3, "int8_kv": 1e-3, "e4m3": 1e-3, "e4m3_block_scale": 1e-3, "e2m1": 1e-3, "fp16": 5e-2}
SCALE_RTOL = 1e-4  # fp32 scales stored beside the codes (amax / qmax): the amax's own noise (<= 1.4e-6, 70x)
FP32_LATENT_MAX_ABS = 1e-4  # the fp32 plan's bounds (tests/test_plan_runtime.py), held after following
FP32_FRAME_PSNR_DB = 60.0


# -- grids: the representable values of each format, sorted; a code is its value's index ----------------
def _grid(values) -> np.ndarray:
    v = np.unique(np.asarray(values, np.float64))  # -0 and 0 merge
    return v[np.isfinite(v)]


_E4M3 = _grid(torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float().numpy())
GRIDS = {
    "int8": _grid(np.arange(-128, 128)),  # activations: QuantizeLinear's full int8 range
    "int8_kv": _grid(np.arange(-127, 128)),  # KV cache: symmetric, clamped to +-127 (quant/formats.Int8)
    "e4m3": _E4M3,  # saturating at +-448
    "e4m3_block_scale": _E4M3[_E4M3 >= 2.0 ** -9],  # NVFP4 block scales: clamped to [2^-9, 448] before rounding
    "e2m1": _grid(list(E2M1_VALUES) + [-v for v in E2M1_VALUES]),
    "fp16": _grid(np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64)),
}


def grid_index(values: np.ndarray, grid: str) -> np.ndarray:
    g = GRIDS[grid]
    v = np.asarray(values, np.float64)
    i = np.clip(np.searchsorted(g, v), 0, len(g) - 1)
    if not np.array_equal(g[i], v):
        bad = v[g[i] != v][:5]
        raise AssertionError(f"values {bad} are not {grid} codes")
    return i


def rounding_excess(y: np.ndarray, index: np.ndarray, grid: str) -> np.ndarray:
    """How far y lies outside the interval of values that round to grid[index], in y's units (0 inside,
    the interval's ends included: a tie may go either way). The first and last grid values take
    everything beyond them (saturation)."""
    g = GRIDS[grid]
    y = np.asarray(y, np.float64)
    v = g[index]
    lo = np.where(index > 0, (g[np.maximum(index - 1, 0)] + v) / 2, -np.inf)
    hi = np.where(index < len(g) - 1, (v + g[np.minimum(index + 1, len(g) - 1)]) / 2, np.inf)
    return np.maximum(np.maximum(lo - y, y - hi), 0.0)


def local_step(index: np.ndarray, grid: str) -> np.ndarray:
    """The grid's spacing at grid[index] (the smaller of its two gaps), in y's units."""
    g = GRIDS[grid]
    lo = np.where(index > 0, g[index] - g[np.maximum(index - 1, 0)], np.inf)
    hi = np.where(index < len(g) - 1, g[np.minimum(index + 1, len(g) - 1)] - g[index], np.inf)
    return np.minimum(lo, hi)


def _relative(excess_x: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """An excess in x's units relative to the amax of x's row (broadcast); an all-zero row has none."""
    return np.where(amax > 0, excess_x / np.where(amax > 0, amax, 1.0), excess_x)


@dataclass
class CodeStats:
    """One quantizer kind (an activation format, a KV-cache part) over a rollout."""

    grid: str
    codes: int = 0
    flips: int = 0
    max_steps: int = 0  # max |plan code - reference code| in grid positions, where a step is coarser than RHO
    max_excess: float = 0.0  # max rounding_excess of the reference's value for the plan's code, / row amax
    scales: int = 0
    max_scale_rel: float = 0.0
    where: str = ""  # where max_excess was seen
    scale_where: str = ""

    def add(self, what: str, plan_idx: np.ndarray, ref_idx: np.ndarray, excess: np.ndarray,
            step: np.ndarray) -> np.ndarray:
        """excess: rounding_excess / row amax per code; step: local_step in x's units / row amax. Steps are
        counted only where they are coarser than RHO: a float format's steps near zero (fp16, E4M3
        subnormals) are finer than fp32 noise, and there the excess alone says the codes agree."""
        diff = np.abs(plan_idx.astype(np.int64) - ref_idx.astype(np.int64))
        self.codes += diff.size
        flips = diff > 0
        self.flips += int(flips.sum())
        coarse = np.broadcast_to(step >= RHO, diff.shape)
        self.max_steps = max(self.max_steps, int(diff[coarse].max(initial=0)))
        d = float(np.max(excess, initial=0.0))
        if d > self.max_excess:
            self.max_excess = d
            self.where = what
        return flips

    def add_scales(self, what: str, plan: np.ndarray, ref: np.ndarray) -> None:
        rel = np.abs(plan.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)
        self.scales += rel.size
        r = float(rel.max(initial=0.0))
        if r > self.max_scale_rel:
            self.max_scale_rel = r
            self.scale_where = what

    @property
    def flip_share(self) -> float:
        return self.flips / max(self.codes, 1)

    def problems(self, name: str) -> list[str]:
        out = []
        if self.max_excess > RHO:
            out.append(f"{name}: a plan code is not the rounding of the emulation's value: off by "
                       f"{self.max_excess:.3g} of the row's amax (> {RHO}; worst at {self.where})")
        if self.max_steps > 1:
            out.append(f"{name}: plan and emulation codes {self.max_steps} steps apart")
        if self.flip_share > MAX_FLIP_SHARE[self.grid]:
            out.append(f"{name}: {self.flips} of {self.codes} codes flipped "
                       f"({self.flip_share:.2e} > {MAX_FLIP_SHARE[self.grid]})")
        if self.max_scale_rel > SCALE_RTOL:
            out.append(f"{name}: stored scales differ by {self.max_scale_rel:.2e} relative (> {SCALE_RTOL}; worst at "
                       f"{self.scale_where})")
        return out


# -- the plan, instrumented --------------------------------------------------------------------------------
def instrument_plan(plan_dir: Path, dst: Path) -> dict[str, str]:
    """A copy of the plan whose dit graph also outputs every activation QuantizeLinear's codes (as fp32,
    [rows, K]) -> {output name: layer}, the layer being the block linear whose Gemm consumes them."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(plan_dir, dst)  # ORT refuses external data outside the model's directory: no links
    path = dst / "dit.onnx"
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name for i in g.initializer}

    def weight_of(value: str) -> str:
        seen, todo, found = set(), [value], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in inits and v.endswith(".weight"):
                found.add(v.removesuffix(".weight"))
            if v in producer:
                todo.extend(producer[v].input)
        if len(found) != 1:
            raise AssertionError(f"cannot tell which linear {value} feeds: {sorted(found)}")
        return found.pop()

    names = {}
    for n in list(g.node):
        if n.op_type != "QuantizeLinear":
            continue
        users = consumers[n.output[0]]
        gemms = [c for dq in users for c in consumers.get(dq.output[0], []) if c.op_type in ("Gemm", "MatMul")]
        if not gemms:  # the KV cache's fp8 / nvfp4 encoders round with QuantizeLinear too (arvc/graphs/lower_kv.py)
            continue
        if len(users) != 1 or users[0].op_type != "DequantizeLinear" or len(gemms) != 1:
            raise AssertionError(f"QuantizeLinear {n.output[0]} does not feed one GEMM through one DequantizeLinear")
        # a twin QuantizeLinear feeds the exposed copy: a second consumer of the plan's own one would keep ORT
        # from fusing it into an integer GEMM (so the instrumented plan would round otherwise)
        out, twin = f"{n.output[0]}_codes", f"{n.output[0]}_twin"
        g.node.append(helper.make_node("QuantizeLinear", list(n.input), [twin], **{a.name: helper.get_attribute_value(a)
                                                                                   for a in n.attribute}))
        g.node.append(helper.make_node("Cast", [twin], [out], to=TensorProto.FLOAT))
        g.output.append(helper.make_empty_tensor_value_info(out))
        names[out] = weight_of(gemms[0].input[1])
    path.unlink()
    onnx.save(model, str(path))
    return names


@dataclass
class PlanTrace:
    codes: list = field(default_factory=list)  # per dit call: {layer: fp32 codes [rows, K]}
    kv: list = field(default_factory=list)  # per dit call: copies of the backend's KV buffers after it
    write_rows: list = field(default_factory=list)  # per dit call: the cache rows it wrote
    latents: np.ndarray | None = None


def trace_plan(session: PlanSession, code_outputs: dict[str, str], blocks: int, seed: int) -> PlanTrace:
    backend, trace = session.backend, PlanTrace()
    binding, run = backend._dit_binding, backend.run_dit
    names = [o.name for o in backend.dit.get_outputs()]

    def run_dit(feeds):
        for n in code_outputs:
            binding.bind_output(n, "cpu")
        x0 = run(feeds)
        outs = dict(zip(names, binding.get_outputs()))
        trace.codes.append({layer: outs[n].numpy().reshape(-1, outs[n].shape()[-1]).copy()
                            for n, layer in code_outputs.items()})
        trace.kv.append([a.copy() for a in backend.kv_arrays])
        trace.write_rows.append(np.asarray(feeds["write_index"]).reshape(-1).copy())
        return x0

    backend.run_dit = run_dit
    try:
        trace.latents = roll(session.generator(seed), verification_prompts(session), blocks)
    finally:
        del backend.run_dit
    return trace


# -- the reference, following the plan's certified rounding decisions --------------------------------------
def _act_scale(x: torch.Tensor, q, timesteps, t) -> torch.Tensor:
    """The scale quant/activations.quantize_input uses for x [..., K], broadcastable against x."""
    if q.mode == "dynamic":
        return dynamic_scale(x, q.format)
    return q.scale if q.scale.dim() == 0 else q.scale[timestep_index(timesteps, t)]


class Follower:
    """Hooks on the reference: compare its codes with the plan's, then take the plan's where they flipped."""

    def __init__(self, trace: PlanTrace, act_table: dict | None, act_timesteps: tuple, manifest):
        self.trace, self.table, self.timesteps = trace, act_table or {}, act_timesteps
        self.stats: dict[str, CodeStats] = {}
        self.call = -1
        self.calls_with_flips = 0
        m = manifest.model.dit
        self.heads, self.dim = m.num_heads, m.dim
        recipe, rows = manifest.recipe, manifest.cache_rows
        self.sink_rows = manifest.sink_rows if recipe.kv_sink else 0
        # (format, first row, end row) of each buffer set; the sink's rows are its buffer's rows, the ring's
        # start at 0 in their own (arvc/graphs/lower_kv.split_rows)
        regions = [(recipe.kv_cache, 0, rows)]
        if recipe.kv_sink:
            regions = [(recipe.kv_sink, 0, self.sink_rows), (recipe.kv_cache, self.sink_rows, rows)]
        # (layer, kind) -> [(format, first row, end row, {part: index into backend.kv_arrays})], as OrtBackend binds
        self.kv_index, k = {}, 0
        for layer in range(m.num_layers):
            for kind in ("k", "v"):
                self.kv_index[(layer, kind)] = []
                for fmt, first, end in regions:
                    parts = {}
                    for p in kv_parts(fmt, self.dim, self.heads):
                        parts[p.name] = k
                        k += 1
                    self.kv_index[(layer, kind)].append((fmt, first, end, parts))
        self._flipped_this_call = False

    def stat(self, name: str, grid: str) -> CodeStats:
        return self.stats.setdefault(name, CodeStats(grid))

    def _begin(self) -> None:
        self.call += 1
        self._flipped_this_call = False
        if self.call >= len(self.trace.codes):
            raise AssertionError(f"the reference makes more dit calls than the plan ({len(self.trace.codes)})")

    # activations ------------------------------------------------------------------------------------------
    def activation(self, layer: str, q, x: torch.Tensor, t) -> torch.Tensor:
        emulated = quantize_input(x, q, self.timesteps, t)  # the library's emulation, unchanged
        plan = self.trace.codes[self.call].get(layer)
        if plan is None:
            raise AssertionError(f"the plan has no quantizer on {layer}'s input (call {self.call})")
        scale = _act_scale(x, q, self.timesteps, t).float()
        xf = x.detach().float().reshape(-1, x.shape[-1])
        s = scale.reshape(-1, 1) if scale.dim() else scale
        y = (xf / s).numpy()
        ref_codes = (emulated.float().reshape(xf.shape) / s).numpy()
        grid = "int8" if q.format == "int8" else "e4m3"
        if plan.shape != y.shape:
            raise AssertionError(f"{layer}: plan codes {plan.shape}, emulation {y.shape} (call {self.call})")
        gi = GRIDS[grid]
        ref_idx = np.clip(np.searchsorted(gi, ref_codes), 0, len(gi) - 1)  # value/scale*scale may be 1 ulp off
        ref_idx = np.where(np.abs(gi[np.maximum(ref_idx - 1, 0)] - ref_codes) < np.abs(gi[ref_idx] - ref_codes),
                           np.maximum(ref_idx - 1, 0), ref_idx)
        plan_idx = grid_index(plan, grid)
        amax, sx = np.abs(xf.numpy()).max(-1, keepdims=True), s.numpy()
        flips = self.stat(f"activations {q.format}", grid).add(
            f"{layer}, call {self.call}", plan_idx, ref_idx, _relative(rounding_excess(y, plan_idx, grid) * sx, amax),
            _relative(local_step(plan_idx, grid) * sx, amax))
        if not flips.any():
            return emulated
        self._flipped_this_call = True
        taken = torch.from_numpy(plan) * s  # the plan's code, dequantized as the emulation does
        followed = torch.where(torch.from_numpy(flips), taken, emulated.float().reshape(xf.shape))
        return followed.reshape(x.shape).to(x.dtype)

    @contextmanager
    def on_activations(self, dit):
        modules = dict(dit.named_modules())
        with tracking_timestep(dit) as state:
            def hook(layer, q):
                return lambda _m, args: (self.activation(layer, q, args[0], state["t"]), *args[1:])

            handles = [modules[n].register_forward_pre_hook(hook(n, q)) for n, q in self.table.items()]
            try:
                yield
            finally:
                for h in handles:
                    h.remove()

    # KV cache ---------------------------------------------------------------------------------------------
    def on_cache(self, cache) -> None:
        """Patch the reference generator's KVCache: count calls, and after each write compare the rows the
        plan wrote in this call with the reference's encoding of the same rows, then store the plan's."""
        begin, write = cache.begin_call, cache._write
        order = {"n": 0}

        def begin_call(frame_start, num_frames):
            self._end_call()
            self._begin()
            order["n"] = 0
            return begin(frame_start, num_frames)

        def _write(dst: torch.Tensor, x: torch.Tensor) -> None:
            write(dst, x)
            layer, kind = divmod(order["n"], 2)
            order["n"] += 1
            self.kv_rows(cache, layer, "kv"[kind], dst, x)

        cache.begin_call, cache._write = begin_call, _write

    def kv_rows(self, cache, layer: int, kind: str, dst: torch.Tensor, x: torch.Tensor) -> None:
        rows = np.concatenate([np.arange(c0, c1) for c0, c1, _n0, _n1 in cache._runs])
        plan_rows = self.trace.write_rows[self.call]
        if not np.array_equal(rows, plan_rows):
            raise AssertionError(f"call {self.call}: the reference writes cache rows {rows}, the plan {plan_rows}")
        tokens = np.concatenate([np.arange(n0, n1) for _c0, _c1, n0, n1 in cache._runs])
        bufs = self.trace.kv[self.call]
        for fmt, first, end, parts in self.kv_index[(layer, kind)]:
            mine = (rows >= first) & (rows < end)
            if not mine.any() or fmt == "fp32":  # fp32 stores no rounding decision: nothing to compare or follow
                continue
            r, n = rows[mine], tokens[mine]
            plan = {p: bufs[i][r - first] for p, i in parts.items()}
            ref_x = x[0, n].float()  # [N, H, Dh]
            followed = self._kv_compare(f"kv {fmt}", f"layer {layer} {kind}, call {self.call}", fmt, plan, ref_x)
            if followed is not None:
                self._flipped_this_call = True
                dst[0, torch.from_numpy(r)] = followed.to(dst.dtype)

    def _kv_compare(self, name: str, where: str, fmt: str, plan: dict, x: torch.Tensor) -> torch.Tensor | None:
        """-> the plan's decoded rows [N, H, Dh] when any code flipped (the reference then stores them), else None."""
        n, h, dh = x.shape
        xs = x.numpy().astype(np.float64)
        amax = np.abs(xs).max(-1, keepdims=True)  # [N, H, 1]: the scale's group (a token's head)
        if fmt == "fp16":
            st = self.stat(name, "fp16")
            p = plan["cache"].reshape(n, h, dh).astype(np.float64)
            ref = x.half().double().numpy()
            pi = grid_index(p, "fp16")
            flips = st.add(where, pi, grid_index(ref, "fp16"), _relative(rounding_excess(xs, pi, "fp16"), amax),
                           _relative(local_step(pi, "fp16"), amax))
            return torch.from_numpy(p).float() if flips.any() else None
        if fmt in ("int8", "fp8"):
            codec, grid = (Int8("per_token"), "int8_kv") if fmt == "int8" else (Fp8E4M3("per_token"), "e4m3")
            st = self.stat(name, grid)
            enc = codec.encode(x)
            scale = plan["scale"].reshape(n, h)
            st.add_scales(where, scale, enc["scale"].double().numpy())
            if fmt == "int8":
                pv, rv = plan["cache"].reshape(n, h, dh).astype(np.float64), enc["data"].double().numpy()
                data = torch.from_numpy(plan["cache"].reshape(n, h, dh).copy())
            else:
                pv = torch.from_numpy(plan["cache"].reshape(n, h, dh).copy()).view(torch.float8_e4m3fn).double().numpy()
                rv = enc["data"].view(torch.float8_e4m3fn).double().numpy()
                data = torch.from_numpy(plan["cache"].reshape(n, h, dh).copy())
            pi = grid_index(pv, grid)
            sx = scale[..., None]
            flips = st.add(where, pi, grid_index(rv, grid), _relative(rounding_excess(xs / sx, pi, grid) * sx, amax),
                           _relative(local_step(pi, grid) * sx, amax))
            if not flips.any():
                return None
            return codec.decode({"data": data, "scale": torch.from_numpy(scale.copy())})
        if fmt == "nvfp4":
            codec, st = NVFP4("per_token"), self.stat(name, "e2m1")
            enc = codec.encode(x)
            s2 = plan["scale"].reshape(n, h)
            st.add_scales(where, s2, enc["weight_scale_2"].double().numpy())
            nb = dh // NVFP4_BLOCK
            bs_bytes = torch.from_numpy(plan["block_scale"].reshape(n, h, nb).copy())
            bs = bs_bytes.view(torch.float8_e4m3fn).double().numpy()
            ref_bs = enc["weight_scale"].view(torch.float8_e4m3fn).double().numpy()
            blocks = xs.reshape(n, h, nb, NVFP4_BLOCK)
            block_amax = np.abs(blocks).max(-1)
            zero = block_amax == 0  # an all-zero block stores scale 1 and zero codes, no rounding decision
            if (bs[zero] != 1).any():
                raise AssertionError(f"{name}: an all-zero block has block scale {bs[zero]} (1 expected; {where})")
            bsi = grid_index(np.where(zero, 1.0, bs), "e4m3_block_scale")
            unit = 6 * s2[..., None]  # block scale units -> x units (block_amax = raw * 6 * s2)
            fl_bs = self.stat(f"{name} block scales", "e4m3_block_scale").add(
                where, bsi, grid_index(np.where(zero, 1.0, ref_bs), "e4m3_block_scale"),
                np.where(zero, 0.0,
                         _relative(rounding_excess(block_amax / unit, bsi, "e4m3_block_scale") * unit, amax)),
                _relative(local_step(bsi, "e4m3_block_scale") * unit, amax))
            packed = torch.from_numpy(plan["cache"].reshape(n, h, dh // 2).copy())
            codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(n, h, nb, NVFP4_BLOCK)
            ref_packed = enc["weight"]
            ref_codes = torch.stack((ref_packed & 0xF, ref_packed >> 4), dim=-1).reshape(n, h, nb, NVFP4_BLOCK)
            table = np.array(list(E2M1_VALUES) + [-v for v in E2M1_VALUES])
            pv, rv = table[codes.numpy()], table[ref_codes.numpy()]
            pi = grid_index(pv, "e2m1")
            step = bs[..., None] * s2[..., None, None]  # the plan's scales: its codes round x / step
            fl_codes = st.add(where, pi, grid_index(rv, "e2m1"),
                              _relative(rounding_excess(blocks / step, pi, "e2m1") * step, amax[..., None]),
                              _relative(local_step(pi, "e2m1") * step, amax[..., None]))
            if not (fl_bs.any() or fl_codes.any()):
                return None
            return codec.decode({"weight": packed, "weight_scale": bs_bytes,
                                 "weight_scale_2": torch.from_numpy(s2.copy())})
        raise AssertionError(f"no comparison for KV format {fmt}")

    def _end_call(self) -> None:
        if self.call >= 0 and self._flipped_this_call:
            self.calls_with_flips += 1

    def problems(self) -> list[str]:
        return [p for name, s in self.stats.items() for p in s.problems(name)]

    def summary(self) -> dict:
        return {name: {"codes": s.codes, "flips": s.flips, "max_steps": s.max_steps,
                       "max_excess": s.max_excess, "max_scale_rel": s.max_scale_rel}
                for name, s in self.stats.items()} | {"calls_with_flips": self.calls_with_flips}


# -- the assertion ---------------------------------------------------------------------------------------
@torch.no_grad()
def assert_quantized_parity(plan_dir: Path, work: Path, ref, vae, blocks: int, *, act_table: dict | None = None,
                            act_timesteps: tuple = (), reference_kv: str = "fp32",
                            reference_kv_sink: str | None = None, exact_qdq: bool = False, seed: int = 0) -> dict:
    """The plan at ``plan_dir`` against ``ref`` emulating its quantization (activations: ``act_table`` as
    for quant/activations.emulated; KV cache: the reference stores ``reference_kv`` / ``reference_kv_sink``)
    over run_parity's rollout. Asserts 1-3 of the module docstring; returns the measurements."""
    plain = PlanSession(plan_dir, exact_qdq=exact_qdq)
    contexts = verification_prompts(plain)
    plain_latents = roll(plain.generator(seed), contexts, blocks)

    outputs = instrument_plan(Path(plan_dir), Path(work) / "instrumented.plan")
    expected = {n for n in (act_table or {})}
    if set(outputs.values()) != expected:
        raise AssertionError(f"quantized GEMM inputs in the plan {sorted(set(outputs.values()))}, "
                             f"in the recipe {sorted(expected)}")
    # the instrumented graph has outputs no manifest makes, which every reader refuses (runtime/plan_graphs.py):
    # this harness alone opens it, with that check off, on the files and on ORT's view of them (ORT's sessions
    # keep each twin QuantizeLinear apart from the plan's own: runtime/ort_backend.py ORT_DISABLED_OPTIMIZERS)
    with mock.patch("arvc.runtime.plan_graphs.check_graphs"), mock.patch("arvc.runtime.ort_backend.check_loaded"):
        session = PlanSession(Path(work) / "instrumented.plan", verify=False, exact_qdq=exact_qdq)
    trace = trace_plan(session, outputs, blocks, seed)
    # 3. exposing the codes changes nothing the plan computes
    assert np.array_equal(trace.latents, plain_latents), "the instrumented plan computes other latents"

    follower = Follower(trace, act_table, act_timesteps, plain.manifest)
    gen = CausalGenerator(ref, plain.geometry, plain.schedule, plain.latent_hw, seed=seed, kv_format=reference_kv,
                          kv_sink_format=reference_kv_sink)
    follower.on_cache(gen.cache)
    with ExitStack() as stack:
        stack.enter_context(follower.on_activations(ref))
        ref_latents = roll(gen, tuple(torch.from_numpy(c) for c in contexts), blocks)
    follower._end_call()
    if follower.call + 1 != len(trace.codes):
        raise AssertionError(f"the reference made {follower.call + 1} dit calls, the plan {len(trace.codes)}")
    # 1. codes
    problems = follower.problems()
    assert not problems, "\n".join(problems + [str(follower.summary())])
    # 2. followed: the fp32 plan's bounds, end to end
    assert np.isfinite(trace.latents).all() and np.isfinite(ref_latents).all(), "NaN / infinity in the latents"
    max_abs = float(np.abs(ref_latents - trace.latents).max())
    frames = psnr(decode_reference(vae, ref_latents), decode_plan(session, trace.latents), 2.0)
    result = {"max_abs_latent_error": max_abs, "frame_psnr_db": round(frames, 3),
              "latent_psnr_db": round(psnr(ref_latents, trace.latents, float(np.abs(ref_latents).max())), 3),
              "codes": follower.summary()}
    assert max_abs <= FP32_LATENT_MAX_ABS and frames >= FP32_FRAME_PSNR_DB, result
    return result
