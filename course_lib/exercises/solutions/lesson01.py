"""Solutions to the exercises of Lesson 01 (notebooks/01_tokenizer.ipynb)."""


def pair_counts(ids: list[int]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for pair in zip(ids, ids[1:]):  # neighbours overlap: (a, b), (b, c), ...
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def encode_word(ids, merges):
    from course_lib.tokenizer import merge

    ids = list(ids)
    while len(ids) >= 2:
        learned = [pair for pair in zip(ids, ids[1:]) if pair in merges]
        if not learned:
            break
        pair = min(learned, key=merges.get)  # the earliest-learned merge first
        ids = merge(ids, pair, merges[pair])
    return ids


def less_text(train_text):
    from course_lib.tokenizer import BPETokenizer

    tok = BPETokenizer()
    tok.train(train_text[: len(train_text) // 10], vocab_size=2048)  # the first tenth only
    return tok
