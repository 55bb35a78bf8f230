"""MP4 (H.264) output through PyAV, written atomically: frames go to a temporary file beside the target
(arvc/atomic.py: a unique name, removed on any exit), which replaces the target only when the stream
closes cleanly and is on disk. A write error (full disk, file size limit, I/O error) is a WriteError naming the
output; the target is then untouched."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import torch

from arvc import atomic


def to_uint8_frames(pixels: torch.Tensor) -> np.ndarray:
    """pixels: [3, N, H, W] or [N, 3, H, W]... in [-1, 1] -> uint8 [N, H, W, 3]."""
    if pixels.dim() != 4 or 3 not in (pixels.shape[0], pixels.shape[1]):
        raise ValueError(f"expected frames as [3, N, H, W] or [N, 3, H, W]; got {tuple(pixels.shape)}")
    x = pixels if pixels.shape[1] == 3 else pixels.transpose(0, 1)  # [N, 3, H, W]
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


class Mp4Writer:
    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: int = 16, crf: int = 18):
        import av  # lazy: the CLI stays light

        if width % 2 or height % 2:
            raise ValueError(f"H.264 (yuv420p) needs even frame sizes; got {width}x{height}")
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output {self.path} must end in .mp4")
        if self.path.is_dir():  # refused now, not after the whole video is generated
            raise atomic.WriteError(errno.EISDIR, f"{self.path}: cannot write: it is a directory; choose another -o")
        with atomic.write_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = atomic.temp_file(self.path, ".mp4.part")
        self._file = os.fdopen(fd, "wb")  # PyAV writes through it: the name is never opened again
        try:
            self._container = av.open(self._file, mode="w", format="mp4")
        except BaseException:
            self._file.close()
            atomic.discard(self._tmp)
            raise
        self._stream = self._container.add_stream("libx264", rate=fps)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": "medium"}
        self.frames_written = 0
        self._av = av

    def write(self, frames: np.ndarray) -> None:
        """frames: uint8 [N, H, W, 3]."""
        with atomic.write_errors(self.path):
            for arr in frames:
                frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for packet in self._stream.encode(frame):
                    self._container.mux(packet)
                self.frames_written += 1

    def close(self) -> Path:
        try:
            with atomic.write_errors(self.path):
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._file.close()  # flushes: a write error surfaces here, before the rename
                atomic.commit_file(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass
        finally:
            try:
                self._file.close()
            except OSError:
                pass  # the same: its flush fails on the full disk that made the writer abort
            atomic.discard(self._tmp)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_mp4(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a video to uint8 [N, H, W, 3] and its frame rate (tests, the judge)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return np.stack(frames), float(s.average_rate)
