"""Wan's 3D rotary position embedding.

A head of D dims holds D/2 rotation pairs, split (time, height, width) as D - 4*(D//6), 2*(D//6),
2*(D//6) dims (Wan: 44/42/42 -> 22/21/21 pairs). Pair i of an axis with d dims rotates by
``pos * 10000^(-2i/d)``. Pairs are ADJACENT elements (x[2i], x[2i+1]), not the rotate-half layout.
Angles and the rotation are computed in float64 (as Wan does) and cast back.
"""
from __future__ import annotations

import torch

THETA = 10000.0


def axis_inv_freq(axis_dim: int) -> torch.Tensor:
    # [axis_dim/2] float64
    return THETA ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)


def rope_angles(axis_dims: tuple[int, int, int], frame_pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Angles for tokens ordered (frame, row, col).

    frame_pos: [F] integer positions of the frames (absolute or window-relative).
    returns: [F*height*width, D/2] float64
    """
    fp = frame_pos.to(torch.float64)
    hp = torch.arange(height, dtype=torch.float64)
    wp = torch.arange(width, dtype=torch.float64)
    a_t = torch.outer(fp, axis_inv_freq(axis_dims[0]))  # [F, pt]
    a_h = torch.outer(hp, axis_inv_freq(axis_dims[1]))  # [H, ph]
    a_w = torch.outer(wp, axis_inv_freq(axis_dims[2]))  # [W, pw]
    f, h, w = len(fp), height, width
    ang = torch.cat(
        [
            a_t[:, None, None, :].expand(f, h, w, -1),
            a_h[None, :, None, :].expand(f, h, w, -1),
            a_w[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )
    return ang.reshape(f * h * w, -1)


class RotaryTable:
    """cos/sin of a token set, built once per call and shared by every layer."""

    def __init__(self, angles: torch.Tensor):
        # angles: [N, D/2] float64 -> broadcast over [B, N, H, D/2]
        self.cos = torch.cos(angles)[None, :, None, :]
        self.sin = torch.sin(angles)[None, :, None, :]

    def to(self, device: torch.device) -> "RotaryTable":
        out = RotaryTable.__new__(RotaryTable)
        out.cos, out.sin = self.cos.to(device), self.sin.to(device)
        return out

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, N, H, D]; pairs (2i, 2i+1)
        xd = x.to(torch.float64).unflatten(-1, (-1, 2))
        xe, xo = xd[..., 0], xd[..., 1]
        out = torch.stack((xe * self.cos - xo * self.sin, xe * self.sin + xo * self.cos), dim=-1)
        return out.flatten(-2).to(x.dtype)
