"""The prompts a plan is checked and profiled with when none is given (the parity gate's pair)."""
from __future__ import annotations

import numpy as np


def verification_prompts(session, seed: int = 1234):
    """Two prompt contexts: the model's own words when it has a text encoder, else seeded embeddings."""
    if session.vocab is not None:
        words = list(session.vocab)
        return session.context_for(" ".join(words[:4])), session.context_for(" ".join(words[-4:]))
    g = np.random.default_rng(seed)
    cfg = session.cfg
    n = max(1, cfg.text_len // 2)
    return tuple(session.context_for(g.standard_normal((n, cfg.text_dim)).astype(np.float32)) for _ in range(2))
