"""Compression (Lesson 08): the same GPT in fewer bytes, fewer parameters or less time.

One module per way of compressing, each taking and returning a course ``GPT`` whose changes a
checkpoint records (``course_lib.changes``), so that every compressed model saves, loads,
samples and evaluates like any other:

- ``quantize``: weights as int8 or int4 codes with float scales, or in bfloat16.
"""

from course_lib.compress.quantize import (
    Int4Linear,
    Int8Linear,
    QuantizedEmbedding,
    dequantize,
    quantize_bf16,
    quantize_int4,
    quantize_int8,
    use_int8_kernel,
)

__all__ = [
    "Int4Linear",
    "Int8Linear",
    "QuantizedEmbedding",
    "dequantize",
    "quantize_bf16",
    "quantize_int4",
    "quantize_int8",
    "use_int8_kernel",
]
