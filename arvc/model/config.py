"""Model configurations: one frozen dataclass per network, with named presets.

Every field is recoverable from tensor shapes (see ``arvc.checkpoints.infer``); nothing about a
model is ever read from a file name.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


def check_range(name: str, value: int, lo: int, hi: int) -> None:
    """A configuration field's range (a plan is untrusted input: docs/plan-validation.md has every range)."""
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, not {value}")


@dataclass(frozen=True)
class WanConfig:
    """The Wan2.1 DiT (text-to-video)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    eps: float = 1e-6
    # RoPE tables cover this many positions per axis (Wan: 1024); absolute-position caches stop there.
    rope_max_positions: int = 1024

    def __post_init__(self) -> None:
        for name in ("dim", "ffn_dim", "text_dim", "freq_dim", "rope_max_positions"):
            check_range(name, getattr(self, name), 1, 65536)
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even (sine and cosine halves)")
        for name in ("num_heads", "num_layers", "in_channels", "out_channels"):
            check_range(name, getattr(self, name), 1, 1024)
        if self.out_channels != self.in_channels:
            raise ValueError(f"out_channels {self.out_channels} must equal in_channels {self.in_channels} (the DiT "
                             "predicts a latent of the input's size)")
        p = self.patch_size
        if len(p) != 3 or p[0] != 1 or not all(1 <= x <= 16 for x in p[1:]):
            raise ValueError(f"patch_size {list(p)} must be [1, ph, pw] with ph and pw in 1..16")
        check_range("text_len", self.text_len, 1, 4096)
        if not (math.isfinite(self.eps) and 0 < self.eps < 1):
            raise ValueError(f"eps {self.eps} must be a finite number with 0 < eps < 1")
        if self.dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide dim {self.dim}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"num_heads {self.num_heads} leaves head_dim {self.head_dim}, which must be even and "
                             ">= 6 for 3D RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axis_dims(self) -> tuple[int, int, int]:
        """Rotary dims per axis (time, height, width); Wan: 128 -> (44, 42, 42)."""
        third = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * third, third, third)

    @property
    def patch_out(self) -> int:
        p = self.patch_size
        return p[0] * p[1] * p[2] * self.out_channels

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown WanConfig fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)

    def param_count(self) -> int:
        d, f, t, p = self.dim, self.ffn_dim, self.text_dim, self.patch_size
        per_block = (
            6 * d                      # modulation
            + 4 * (d * d + d) + 2 * d  # self-attn q,k,v,o + norm_q/k
            + 2 * d                    # norm3 (affine)
            + 4 * (d * d + d) + 2 * d  # cross-attn
            + d * f + f + f * d + d    # ffn
        )
        non_block = (
            d * self.in_channels * p[0] * p[1] * p[2] + d
            + t * d + d + d * d + d
            + self.freq_dim * d + d + d * d + d
            + d * 6 * d + 6 * d
            + 2 * d + d * self.patch_out + self.patch_out
        )
        return self.num_layers * per_block + non_block


@dataclass(frozen=True)
class Numerics:
    """Numerics switches recorded in every plan.

    modulation_bf16: the causal checkpoints (Self-Forcing, LongLive, CausVid) were trained with the
    residual stream, LayerNorm outputs, modulation and gates in bf16; the original Wan keeps them in
    fp32. With fp32 weights this switch rounds those tensors to bf16 to reproduce the former.
    """

    modulation_bf16: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Test presets: the same architecture at sizes that run in milliseconds on a CPU.
    "test-tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=8, freq_dim=32),
    "test-small": WanConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=3, text_dim=48, text_len=16, freq_dim=64),
}


@dataclass(frozen=True)
class WanVAEConfig:
    """The Wan2.1 causal 3D VAE (decoder side is what arvc runs)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Decoder order (the encoder's temporal downsampling reversed): the first two upsamplings are 3D.
    temporal_upsample: tuple[bool, ...] = (True, True, False)
    # Per-channel latent statistics (decode: z * std + mean). They are not stored in the checkpoint;
    # defaults are Wan2.1's (shared/reference/wan2.1-vae-latent-stats.json). A z_dim other than 16
    # must supply its own.
    latent_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )
    latent_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )

    def __post_init__(self) -> None:
        check_range("base_dim", self.base_dim, 1, 4096)
        check_range("z_dim", self.z_dim, 1, 1024)
        if not (1 <= len(self.dim_mult) <= 8 and all(1 <= m <= 64 for m in self.dim_mult)):
            raise ValueError(f"dim_mult {list(self.dim_mult)} must hold 1..8 multipliers, each in 1..64")
        check_range("num_res_blocks", self.num_res_blocks, 1, 16)
        if len(self.temporal_upsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_upsample has {len(self.temporal_upsample)} entries; "
                f"dim_mult {self.dim_mult} needs {len(self.dim_mult) - 1} (one per upsampling)"
            )
        for name in ("latent_mean", "latent_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} values but z_dim is {self.z_dim}; "
                    "pass latent_mean/latent_std for a non-Wan latent size"
                )
        if not all(math.isfinite(v) for v in (*self.latent_mean, *self.latent_std)):
            raise ValueError("latent_mean and latent_std must be finite numbers")
        if any(s <= 0 for s in self.latent_std):
            raise ValueError(f"latent_std must be positive, got {min(self.latent_std)}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_upsample)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("dim_mult", "temporal_upsample", "latent_mean", "latent_std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "WanVAEConfig":
        d = dict(d)
        for k in ("dim_mult", "temporal_upsample", "latent_mean", "latent_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def latent_frames_for(video_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames whose decode yields at least ``video_frames`` (first latent -> 1 frame, later -> 4)."""
    return 1 + math.ceil(max(video_frames - 1, 0) / temporal_factor)


VAE_PRESETS: dict[str, WanVAEConfig] = {
    "wan2.1-vae": WanVAEConfig(),
    # Wan's first 4 latent statistics, so the tiny preset still exercises the de-normalization.
    "test-tiny-vae": WanVAEConfig(
        base_dim=8, z_dim=4, latent_mean=(-0.7571, -0.7089, -0.9113, 0.1075), latent_std=(2.8184, 1.4541, 2.3275, 2.6558)
    ),
}
