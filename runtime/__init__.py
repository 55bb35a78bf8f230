"""Streaming runtime: the plan format, its backends and kernels, sessions and video output."""
