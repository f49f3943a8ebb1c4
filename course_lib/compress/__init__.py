"""Compression (Lesson 08): the same GPT in fewer bytes, fewer weights, or a smaller GPT.

One module per way of compressing, each taking and returning a course ``GPT`` whose changes a
checkpoint records (``course_lib.changes``), so that every compressed model saves, loads,
samples and evaluates like any other (``course-lib compress`` on the command line):

- ``quantize``: fewer bytes a weight, as int8 or int4 codes with float scales, or bfloat16.
- ``prune``: fewer weights, zeroed by magnitude, or whole attention heads and MLP neurons
  removed by importance (smaller matrices).
- ``distill``: a smaller student trained on a teacher's soft targets.
- ``measure``: what each costs and saves, in one table: weights, bytes on disk, bits per
  character on held-out text, tokens per second (timed with ``course_lib.timing``).
"""

from course_lib.compress.distill import DistillationLoss, distill, distill_loss
from course_lib.compress.measure import (
    Measurement,
    compare_speed,
    count_weights,
    disk_bytes,
    generation_speed,
    held_out_bpc,
    measure,
    prefill_speed,
    table,
)
from course_lib.compress.prune import (
    head_importance,
    least_important,
    magnitude_masks,
    neuron_importance,
    prune_heads,
    prune_magnitude,
    prune_neurons,
    random_units,
    sparsity,
)
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
    "DistillationLoss",
    "Int4Linear",
    "Int8Linear",
    "Measurement",
    "QuantizedEmbedding",
    "compare_speed",
    "count_weights",
    "dequantize",
    "disk_bytes",
    "distill",
    "distill_loss",
    "generation_speed",
    "head_importance",
    "held_out_bpc",
    "least_important",
    "magnitude_masks",
    "measure",
    "neuron_importance",
    "prefill_speed",
    "prune_heads",
    "prune_magnitude",
    "prune_neurons",
    "quantize_bf16",
    "quantize_int4",
    "quantize_int8",
    "random_units",
    "sparsity",
    "table",
    "use_int8_kernel",
]
