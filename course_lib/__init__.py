"""course_lib: the finished, tested pieces of the course "Build a GPT from scratch".

Each module is derived step by step in one lesson (its docstring names the lesson); the lesson
then imports the module and checks both agree. Later lessons build on these modules.

    env          where things live, which device to use, seeding          (Lesson 00)
    data         the Shakespeare corpus: download, checks, splits, tokens  (Lessons 00, 01)
    tokenizer    byte-level BPE, Hugging Face tokenizer.json format        (Lesson 01)
    positional   sinusoidal position encodings                             (Lesson 02)
    attention    scaled dot-product and multi-head attention, KV cache     (Lesson 03)
    viz          attention heatmaps and bertviz views, offline             (Lessons 03, 06)
    model        GPTConfig and GPT (GPT-2's architecture), Hugging Face I/O (Lesson 04)
    train        the training loop: AdamW, schedule, evaluation, DDP      (Lesson 05)
    checkpoint   checkpoints as folders, written atomically, exact resume  (Lesson 05)
    exercises    checkers for every lesson's exercises
    cli          the ``course-lib`` command
"""

__version__ = "0.1.0"
