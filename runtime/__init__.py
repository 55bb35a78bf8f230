"""Streaming runtime: KV cache, schedule, causal loop, sessions and video output."""
