"""Text to text: the language model itself names a passage's genre. Lesson 07 (fine-tuning),
part 2, the last of the ways to answer in ``course_lib.genre``.

The task, the passages, the folds and the scores are ``course_lib.genre``'s; here the language
model answers in its own terms. Each passage is followed by ``"\\nGenre:"`` and the answer,
" tragedy" and an end of text, and only the answer's tokens are trained on (every other target
is ``IGNORE_INDEX``), with the next-token loss ``train`` uses by default. To predict,
``score_genres`` teacher-forces each of the four answers and compares their log-probabilities:
the model chooses among the genres and cannot answer anything else.

    for train_plays, test_plays in leave_plays_out_folds(passages.plays):
        train_p, test_p = passages.select(train_plays), passages.select(test_plays)
        train(model, {"train": text_batches(train_p, tokenizer), "val": ...}, config)
        macro_f1(score_genres(model, test_p, tokenizer).argmax(1), test_p.labels)

One example, on a tokenizer of bytes and an end of text:

    >>> import torch
    >>> from course_lib.genre import genre_index
    >>> from course_lib.genre_text import genre_example
    >>> from course_lib.model import IGNORE_INDEX
    >>> from course_lib.tokenizer import BPETokenizer
    >>> tok = BPETokenizer()
    >>> tok.train("To be, or not to be", vocab_size=257, special_tokens=("<|endoftext|>",))
    >>> x, y = genre_example(torch.tensor(tok.encode("To be")), genre_index("tragedy"), tok)
    >>> tok.decode(x.tolist())                      # the input: passage, prompt, answer
    'To be\\nGenre: tragedy'
    >>> tok.decode(y[y != IGNORE_INDEX].tolist())   # the targets trained on: the answer
    ' tragedy<|endoftext|>'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.errors import CourseError
from course_lib.genre import GENRES, Passages
from course_lib.model import IGNORE_INDEX
from course_lib.tokenizer import BPETokenizer
from course_lib.train import Batch, BatchSource

ANSWER_PROMPT = "\nGenre:"


def _answer(label: int, tokenizer: BPETokenizer) -> list[int]:
    """The answer's tokens: the genre with a leading space, then <|endoftext|> (if the
    tokenizer has it), so that a generating model stops after it."""
    if not 0 <= label < len(GENRES):
        raise CourseError(f"label={label!r}, expected a genre index in [0, {len(GENRES)})")
    eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    return tokenizer.encode(" " + GENRES[label]) + eot


def genre_example(ids_row: Tensor, label: int, tokenizer: BPETokenizer) -> tuple[Tensor, Tensor]:
    """One training example: the passage, ``ANSWER_PROMPT`` and the answer (the genre's word
    after a space, then <|endoftext|>), as x (L,) and its next-token targets y (L,).

    y is IGNORE_INDEX everywhere but at the positions whose next token is part of the answer:
    the loss then trains the model to answer, not to write the passage or the prompt.
    """
    prompt = torch.tensor(tokenizer.encode(ANSWER_PROMPT), dtype=torch.long)
    answer = torch.tensor(_answer(int(label), tokenizer), dtype=torch.long)
    seq = torch.cat([ids_row.long().cpu(), prompt, answer])
    x, y = seq[:-1], seq[1:].clone()
    y[: len(seq) - 1 - len(answer)] = IGNORE_INDEX
    return x, y


def _examples(passages: Passages, labels: Tensor, tokenizer: BPETokenizer) -> tuple[Tensor, Tensor]:
    """genre_example for every row (with the given labels), padded to one length: x (N, L)
    with <|endoftext|> (id 0 if there is none), y (N, L) with IGNORE_INDEX."""
    pairs = [genre_example(row, int(label), tokenizer)
             for row, label in zip(passages.ids, labels)]  # fmt: skip
    pad = tokenizer.eot_id or 0
    x = nn.utils.rnn.pad_sequence([x for x, _ in pairs], batch_first=True, padding_value=pad)
    y = nn.utils.rnn.pad_sequence([y for _, y in pairs], batch_first=True,
                                  padding_value=IGNORE_INDEX)  # fmt: skip
    return x, y


def text_batches(passages: Passages, tokenizer: BPETokenizer) -> BatchSource:
    """A batch source for ``train`` with its default next-token loss: random rows as
    ``genre_example``s, ``(x (B, L), y (B, L))`` padded to one length L (padding is never a
    target). L is the passage length plus about 9 tokens: it must fit the model's block_size."""
    x, y = _examples(passages, passages.labels, tokenizer)

    def batches(batch_size: int, generator: torch.Generator) -> Batch:
        rows = torch.randint(len(x), (batch_size,), generator=generator)
        return x[rows], y[rows]

    return batches


@torch.no_grad()
def score_genres(
    model: nn.Module, passages: Passages, tokenizer: BPETokenizer, batch_size: int = 128
) -> Tensor:
    """(N, 4): the log-probability the model gives each genre's whole answer after the passage
    and the prompt, teacher-forced (the sum over the answer's tokens). The prediction is
    ``score_genres(...).argmax(1)``: the model chooses among the four answers only.

    One forward pass per genre per batch, in eval mode (put back in the mode it was in).
    """
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    scores = torch.zeros(len(passages), len(GENRES))
    for g in range(len(GENRES)):
        x, y = _examples(passages, torch.full((len(passages),), g), tokenizer)
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].to(device), y[start : start + batch_size]
            logits = model(xb).logits.float().cpu()  # (B, L, vocab_size)
            nll = F.cross_entropy(logits.transpose(1, 2), yb, ignore_index=IGNORE_INDEX,
                                  reduction="none")  # fmt: skip
            # nll (B, L): 0 where the target is ignored
            scores[start : start + batch_size, g] = -nll.sum(1)
    model.train(was_training)
    return scores
