"""Solutions to the exercises of Lesson 01 (notebooks/01_tokenizer.ipynb)."""


def decode(ids: list[int], merges: dict[tuple[int, int], int]) -> str:
    vocab = {i: bytes([i]) for i in range(256)}  # a byte's id stands for the byte
    for (a, b), new_id in merges.items():  # in the order learned: a and b exist already
        vocab[new_id] = vocab[a] + vocab[b]
    data = b"".join(vocab[i] for i in ids)  # join first: a token may hold part of a character
    return data.decode("utf-8", errors="replace")


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
