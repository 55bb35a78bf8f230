"""Streaming from a compiled plan: the causal loop on the plan's graphs, with VAE decoding overlapped.

Pipeline: a worker thread runs the DiT block by block (denoising calls + cache call) and hands each
block's clean latents to the caller through a one-slot queue; the caller's iterator decodes them with
the VAE one latent frame at a time and yields frames as soon as they exist. So the VAE decode of block
b runs while the worker computes block b+1, frames come out in order, and at most two blocks of
latents are alive at any time (memory is bounded for any length). A worker error is re-raised in the
caller; closing the iterator stops the worker.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from arvc.model.cache_geometry import CacheGeometry, SlotMap
from arvc.model.causal import CausalLoop
from arvc.model.config import WanConfig, latent_frames_for
from arvc.model.rope import rope_angles
from arvc.model.schedule import Schedule
from arvc.model.stream_inputs import (check_frames, check_seconds, check_seed, check_switch_time, check_threads,
                                      prompt_words)

from .backends import open_backend
from .plan import PlanError, read_manifest

_ROPE_CACHE = 16  # position lists whose cos/sin tables are kept (absolute positions keep changing)


class PlanGenerator(CausalLoop):
    """CausalLoop hooks on the dit and text graphs of a plan."""

    def __init__(self, backend, cfg: WanConfig, geom: CacheGeometry, schedule: Schedule,
                 latent_hw: tuple[int, int], seed: int = 0):
        super().__init__(geom, schedule, (1, cfg.in_channels, geom.frames_per_block, *latent_hw), seed)
        self.backend, self.cfg = backend, cfg
        self.grid = (latent_hw[0] // cfg.patch_size[1], latent_hw[1] // cfg.patch_size[2])
        self.frame_tokens = self.grid[0] * self.grid[1]
        self.slots = SlotMap(geom, cfg.rope_max_positions)
        self._rope: OrderedDict = OrderedDict()
        self._prompts: OrderedDict = OrderedDict()
        self.times = {"text": 0.0, "dit": 0.0, "dit_calls": 0}
        self.recorder = None  # runtime/profiler.Recorder while profiling
        self._recaching = False

    def _set_context(self, context: np.ndarray) -> None:
        key = context.tobytes()
        if key not in self._prompts:  # the text stage runs once per prompt
            t0 = time.perf_counter()
            self._prompts[key] = self.backend.cross_kv(context)
            t1 = time.perf_counter()
            self.times["text"] += t1 - t0
            if self.recorder is not None:
                self.recorder.add("text", "text", t0, t1)
            while len(self._prompts) > 4:
                self._prompts.popitem(last=False)
        self._prompts.move_to_end(key)
        self.backend.bind_cross(self._prompts[key])

    def _tables(self, positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(positions)
        if key not in self._rope:
            ang = rope_angles(self.cfg.rope_axis_dims, torch.tensor(positions), *self.grid).numpy()
            self._rope[key] = (np.cos(ang).astype(np.float32)[None], np.sin(ang).astype(np.float32)[None])
            while len(self._rope) > _ROPE_CACHE:
                self._rope.popitem(last=False)
        return self._rope[key]

    def _denoise(self, x: torch.Tensor, t: float, frame_start: int) -> torch.Tensor:
        call = self.slots.plan(frame_start, x.shape[2])
        T, cap = self.frame_tokens, self.geom.capacity_frames
        rows = np.concatenate([np.arange(s * T, (s + 1) * T) for s in call.slots])[:, None].astype(np.int64)
        valid = np.zeros(cap * T, bool)
        valid[: call.num_key_slots * T] = True
        q_cos, q_sin = self._tables(call.query_positions)
        feeds = {"latents": x.numpy(), "timestep": np.array([t], np.float64), "write_index": rows,
                 "key_valid": valid, "rope_q_cos": q_cos, "rope_q_sin": q_sin}
        if self.geom.rope == "relative":
            k_pos = call.key_positions + [0] * (cap - call.num_key_slots)  # unfilled slots are masked out
            feeds["rope_k_cos"], feeds["rope_k_sin"] = self._tables(k_pos)
        t0 = time.perf_counter()
        x0 = self.backend.run_dit(feeds)
        t1 = time.perf_counter()
        self.times["dit"] += t1 - t0
        self.times["dit_calls"] += 1
        if self.recorder is not None:
            steps = self.schedule.timesteps
            name = "recache" if self._recaching else (f"step {steps.index(t)}" if t in steps else "cache")
            self.recorder.add(name, "dit", t0, t1, block=self.block_index, t=t, frame_start=frame_start)
        return torch.from_numpy(x0)

    def switch_prompt(self, context) -> list[int]:
        self._recaching = True
        try:
            return super().switch_prompt(context)
        finally:
            self._recaching = False

    def _reset_cache(self, first_frame: int, keep_sink: bool) -> None:
        self.slots.reset(first_frame, keep_sink)


@dataclass
class StreamStats:
    frames: int = 0
    blocks: int = 0
    wall_s: float = 0.0
    first_frame_s: float | None = None
    dit_s: float = 0.0
    vae_s: float = 0.0
    text_s: float = 0.0
    block_s: list[float] = field(default_factory=list)  # DiT seconds per block (5 calls each with 4 steps)

    @property
    def overlap(self) -> float:
        """Share of the shorter stage's time hidden behind the other: 1 = fully overlapped, 0 = serial."""
        hidden = self.dit_s + self.vae_s - self.wall_s
        shorter = min(self.dit_s, self.vae_s)
        return max(0.0, min(1.0, hidden / shorter)) if shorter > 0 else 0.0


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class PlanSession:
    """A loaded plan. ``stream`` generates a video; ``switch_prompt`` changes the prompt mid-stream."""

    def __init__(self, plan_dir: str | Path, threads: int | None = None, verify: bool = True, exact_qdq: bool = False,
                 backend: str | None = None, **backend_options):
        """exact_qdq: run activation Q/DQ as the ONNX ops define it instead of ORT's fused integer kernels
        (fidelity checks; the default is what ORT runs fastest). backend: ort | torch | tensorrt (default:
        the plan's compile target); backend_options: runtime/backends.open_backend's (device, dtype,
        cache_ops, cuda_graph)."""
        self.plan_dir = Path(plan_dir)
        if threads is not None:
            check_threads(threads)
        self.manifest = m = read_manifest(self.plan_dir, verify_files=verify)
        self.cfg, self.geometry, self.schedule = m.model.dit, m.geometry, m.schedule
        self.height, self.width, self.fps = m.resolution.height, m.resolution.width, m.resolution.fps
        self.latent_hw = m.latent_hw
        self.temporal_factor = m.temporal_factor
        te = m.model.text_encoder
        self.vocab = {w: i for i, w in enumerate(te.vocab)} if te else None
        self.text_max_len = te.max_len if te else None
        self.backend = open_backend(backend, self.plan_dir, m, threads=threads, exact_qdq=exact_qdq, **backend_options)
        self.stats = StreamStats()
        self._pending: list = []
        self._lock = threading.Lock()
        self._streaming = False  # one stream at a time: the cache and VAE state belong to it
        self.recorder = None  # runtime/profiler.Recorder: per-stage events of the next streams (arvc profile)

    # -- prompts -------------------------------------------------------------------------------------
    def context_for(self, prompt) -> np.ndarray:
        """Text (plans with a text encoder) or embeddings [L, text_dim] -> context [1, text_len, text_dim]."""
        cfg = self.cfg
        if isinstance(prompt, str):
            if self.vocab is None:
                raise ValueError("this plan has no text encoder: pass prompt embeddings [L, "
                                 f"{cfg.text_dim}] (e.g. umT5 output) instead of text")
            words = prompt_words(prompt, self.vocab, self.text_max_len)
            ids = np.zeros(self.text_max_len, np.int64)
            ids[: len(words)] = [self.vocab[w] for w in words]
            emb = self.backend.encode_text(ids, len(words))[0]
        else:
            emb = prompt.detach().cpu().numpy() if isinstance(prompt, torch.Tensor) else np.asarray(prompt)
            if emb.ndim == 3 and emb.shape[0] == 1:
                emb = emb[0]
        if emb.ndim != 2 or emb.shape[1] != cfg.text_dim:
            raise ValueError(f"prompt embeddings must be [L, {cfg.text_dim}] for this plan; got {tuple(emb.shape)}")
        if emb.shape[0] > cfg.text_len:
            raise ValueError(f"{emb.shape[0]} prompt tokens exceed this model's {cfg.text_len}; truncate the prompt")
        if not np.isfinite(emb).all():
            raise ValueError("prompt embeddings contain NaN or infinity")
        out = np.zeros((1, cfg.text_len, cfg.text_dim), np.float32)
        out[0, : emb.shape[0]] = emb
        return out

    def switch_prompt(self, prompt) -> None:
        """Switch prompts mid-stream (KV re-cache); takes effect at the next block the DiT has not started."""
        ctx = self.context_for(prompt)
        with self._lock:
            if not self._streaming:
                raise RuntimeError("switch_prompt() changes a running stream; start one with stream(prompt, ...) "
                                   "or schedule switches with stream(..., switches=[(seconds, prompt)])")
            self._pending.append(ctx)

    # -- timing of prompt switches -------------------------------------------------------------------
    def frames_before_block(self, block: int) -> int:
        """Video frames decoded before block ``block`` starts (first latent frame -> 1, later -> 4)."""
        latents = block * self.geometry.frames_per_block
        return 0 if latents == 0 else 1 + self.temporal_factor * (latents - 1)

    def block_for_time(self, seconds: float) -> int:
        """The block before which a switch at ``seconds`` applies (the first one starting at or after it)."""
        frame = seconds * self.fps
        if not math.isfinite(frame):
            raise ValueError(f"a prompt switch at {seconds} s has no block; give a finite time")
        # frames_before_block(b) = 1 + tf * (b * fpb - 1) for b >= 1: start one block early and step, so that the
        # float estimate never decides the block and a far switch costs no loop over every block before it
        tf, fpb = self.temporal_factor, self.geometry.frames_per_block
        b = max(0, math.floor(((frame - 1) / tf + 1) / fpb) - 1)
        while self.frames_before_block(b) < frame:
            b += 1
        return b

    # -- streaming -----------------------------------------------------------------------------------
    def blocks_for(self, frames: int) -> int:
        return math.ceil(latent_frames_for(frames, self.temporal_factor) / self.geometry.frames_per_block)

    def generator(self, seed: int) -> PlanGenerator:
        gen = PlanGenerator(self.backend, self.cfg, self.geometry, self.schedule, self.latent_hw, seed)
        gen.recorder = self.recorder
        return gen

    def stream(self, prompt, seconds: float | None = None, *, frames: int | None = None, seed: int = 0,
               switches: Sequence[tuple[float, object]] = (), raw: bool = False) -> Iterator[np.ndarray]:
        """Yield the video's frames in order as they are decoded: uint8 [H, W, 3] (or float [3, H, W] in
        [-1, 1] with raw=True). ``switches``: (seconds, prompt) pairs applied at block boundaries."""
        if frames is None:
            if seconds is None:
                raise ValueError("give the video length as seconds (or frames=)")
            frames = round(check_seconds(seconds) * self.fps)
            if frames < 1:
                raise ValueError(f"{seconds:g} s at {self.fps} fps is less than one frame; give a longer video")
        frames = check_frames(frames, self.fps)
        seed = check_seed(seed)
        first = self.context_for(prompt)
        length_s = frames / self.fps
        scheduled = sorted(((self.block_for_time(check_switch_time(s, length_s)), self.context_for(p))
                            for s, p in switches), key=lambda x: x[0])
        return self._pipeline(first, scheduled, frames, seed, raw)

    def _pipeline(self, first_ctx, scheduled, total_frames, seed, raw):
        gen = self.generator(seed)
        blocks = self.blocks_for(total_frames)
        latents_q: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        with self._lock:
            if self._streaming:
                raise RuntimeError("this session is already streaming; finish or close() the previous "
                                   "iterator first (or load the plan again for a second stream)")
            self._streaming = True
            self._pending.clear()
        stats = self.stats = StreamStats()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    latents_q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def dit_worker() -> None:
            try:
                gen.set_prompt(first_ctx)
                pending_sched = list(scheduled)
                for b in range(blocks):
                    while pending_sched and pending_sched[0][0] <= b:
                        gen.switch_prompt(pending_sched.pop(0)[1])
                    with self._lock:
                        live, self._pending[:] = list(self._pending), []
                    for ctx in live:
                        gen.switch_prompt(ctx)
                    t0 = time.perf_counter()
                    x0 = gen.next_block()
                    t1 = time.perf_counter()
                    stats.block_s.append(t1 - t0)
                    if self.recorder is not None:
                        video = self.frames_before_block(b + 1) - self.frames_before_block(b)
                        self.recorder.add(f"block {b}", "block", t0, t1, block=b, video_frames=video)
                    if not put(x0.numpy()):
                        return
                put(_DONE)
            except BaseException as e:  # surfaced in the caller
                put(_Failed(e))

        worker = threading.Thread(target=dit_worker, name="arvc-dit", daemon=True)
        t_start = time.perf_counter()
        if self.recorder is not None:
            self.recorder.add("stream", "stream", t_start, t_start, frames=total_frames, seed=seed)
        emitted, first_latent = 0, True
        try:
            self.backend.reset_vae()
            worker.start()
            while emitted < total_frames:
                item = latents_q.get()
                if isinstance(item, _Failed):
                    if isinstance(item.error, PlanError):  # the plan's own fault: its message and exit code
                        raise item.error
                    raise RuntimeError(f"the DiT worker failed: {item.error}") from item.error
                if item is _DONE:
                    raise RuntimeError(f"the DiT worker stopped after {emitted} of {total_frames} frames")
                stats.blocks += 1
                for i in range(item.shape[2]):
                    t0 = time.perf_counter()
                    pixels = self.backend.run_vae(item[:, :, i:i + 1], first_latent)[0]  # [3, n, H, W]
                    t1 = time.perf_counter()
                    stats.vae_s += t1 - t0
                    if self.recorder is not None:
                        self.recorder.add("vae frame", "vae", t0, t1, latent=(stats.blocks - 1) * item.shape[2] + i,
                                           first=first_latent)
                    first_latent = False
                    for j in range(pixels.shape[1]):
                        if emitted == total_frames:
                            break
                        frame = pixels[:, j]
                        stats.first_frame_s = stats.first_frame_s or time.perf_counter() - t_start
                        emitted += 1
                        if self.recorder is not None:
                            self.recorder.instant("frame", "frame", index=emitted - 1)
                        stats.frames = emitted
                        yield frame.copy() if raw else _to_uint8(frame)
        finally:
            stop.set()
            if worker.ident is not None:
                worker.join()  # it stops at its next hand-over, after the DiT call in flight
            with self._lock:
                self._streaming = False
            stats.wall_s = time.perf_counter() - t_start
            stats.dit_s, stats.text_s = gen.times["dit"], gen.times["text"]


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    # [3, H, W] in [-1, 1] -> [H, W, 3] uint8, rounding as runtime.video.to_uint8_frames does
    x = np.rint((np.clip(frame, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(1, 2, 0))


def load(plan_dir: str | Path, threads: int | None = None, verify: bool = True, exact_qdq: bool = False,
         backend: str | None = None, **backend_options) -> PlanSession:
    """Open a compiled plan for streaming (checks every file's SHA-256 unless verify=False). backend: ort |
    torch | tensorrt (default: the plan's target); e.g. ``load(plan, backend="torch", device="cuda")``."""
    return PlanSession(plan_dir, threads, verify, exact_qdq, backend, **backend_options)
