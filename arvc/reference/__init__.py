"""The PyTorch reference: the causal loop on the reference DiT, its KV cache, streaming, and the modules
built from checkpoint files. The compiler checks plans against it; the runtime never imports it."""
