"""Quantized storage formats (INT8, FP8 E4M3, NVFP4) and recipes. Arrives with the low-precision milestone."""
