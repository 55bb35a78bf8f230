"""arvc: compile and stream causal video diffusion generators."""

__version__ = "0.1.0"
