"""The genre of a passage: comedy, history, tragedy or romance. Lesson 07 (fine-tuning), part 2.

Sixty-four tokens of a play: which kind of play are they from? The labels are the First Folio's
groups, with the late romances apart (``course_lib.data.KINDS``). The task has two traps, and
this module is built around them:

* **Memory is not genre.** Passages of one play share its names and phrases, so a classifier
  tested on other passages of the plays it trained on can score well by recognising the play.
  Every evaluation here leaves whole plays out (``leave_plays_out_folds``): a fold tests on
  plays that no row of its training set comes from, with every genre in each test set.
* **The genres are unequal.** 12 comedies, 10 histories, 11 tragedies, 4 romances: always
  answering "comedy" is right a third of the time. So the score is the macro-F1 (the mean of the
  four genres' F1, where always answering comedy gets about 0.12), and the losses weight each
  genre by the inverse of its frequency (``class_weights``).

The ways to answer, from cheapest to dearest, all through the same passages:

    passages = play_passages(tokenizer)            # 37 plays x 24 windows of 64 tokens
    for train_plays, test_plays in leave_plays_out_folds(passages.plays):
        train, test = passages.select(train_plays), passages.select(test_plays)
        # 1. words alone: fit_linear(bag_of_tokens(train.ids, V), train.labels)
        # 2. a linear probe: fit_linear on the frozen model's features, model(ids).hidden
        #    (B, T, C) at the last position, [:, -1], or averaged over positions, .mean(1)
        # 3. fine-tuning: add_classifier, then train(..., classifier_batches(train),
        #    loss_fn=classifier_loss(class_weights(train.labels))), predict(model, test)
        # 4. text to text (course_lib.genre_text): train on text_batches(train, tokenizer)
        #    with the next-token loss, then score_genres(model, test, tokenizer).argmax(1)
        macro_f1(predictions, test.labels)

    >>> from course_lib.genre import macro_f1
    >>> import torch
    >>> macro_f1(torch.tensor([0, 0, 1, 1, 1, 2, 0, 1]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 3]))
    0.5
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.data import KIND, KINDS, Splits, load_splits
from course_lib.errors import CourseError
from course_lib.finetune import classify
from course_lib.tokenizer import BPETokenizer
from course_lib.train import Batch, BatchSource, LossFn

GENRES = tuple(kind for kind in KINDS if kind != "poem")  # comedy, history, tragedy, romance
# Where a play's text begins: its first SCENE line ends the title and the list of characters,
# which are no passage of the play (and a title such as "THE TRAGEDY OF ..." gives it away).
_FIRST_SCENE = re.compile(r"^[ \t]*scene\b", re.M | re.I)


def genre_index(label: str) -> int:
    """The index of a genre in GENRES: "comedy" -> 0, ..., "romance" -> 3."""
    if label not in GENRES:
        raise CourseError(
            f"unknown genre {label!r}: expected one of {', '.join(GENRES)} (the plays' kinds in "
            f"course_lib.data.KINDS; poems have no genre here)"
        )
    return GENRES.index(label)


# ---------------------------------------------------------------------------------------------
# The passages, and folds that leave whole plays out.


@dataclass(frozen=True)
class Passages:
    """Windows of token ids from the plays, each with its play's genre.

    ids: (N, T) int64 token ids; labels: (N,) int64 genre indices (``GENRES[label]``);
    plays: the play each row comes from, N names.
    """

    ids: Tensor
    labels: Tensor
    plays: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.plays)
        if self.ids.dim() != 2 or self.labels.shape != (n,) or len(self.ids) != n:
            raise CourseError(
                f"Passages needs ids (N, T), labels (N,) and N play names, got ids "
                f"{tuple(self.ids.shape)}, labels {tuple(self.labels.shape)} and {n} names"
            )

    def __len__(self) -> int:
        return len(self.plays)

    def select(self, plays: Iterable[str]) -> Passages:
        """The rows of the named plays, in their order here."""
        wanted = {plays} if isinstance(plays, str) else set(plays)
        if unknown := sorted(wanted - set(self.plays)):
            raise CourseError(
                f"no passages of {', '.join(unknown)}: the names must be among these passages' "
                f"plays (e.g. {self.plays[0]!r}), as leave_plays_out_folds(passages.plays) gives"
            )
        rows = [i for i, play in enumerate(self.plays) if play in wanted]
        index = torch.tensor(rows, dtype=torch.long)
        return Passages(self.ids[index], self.labels[index], tuple(self.plays[i] for i in rows))


def play_passages(
    tokenizer: BPETokenizer, length: int = 64, per_play: int = 24, splits: Splits | None = None
) -> Passages:
    """``per_play`` passages of ``length`` tokens from each of the 37 plays (train and val).

    Each play's text from its first SCENE line on (past the title and the list of characters)
    is cut into ``per_play`` equal parts; a part's passage is the first ``length`` tokens from
    the first line that begins in its second half. So passages never overlap, span the whole
    play, start at the start of a line, and are the same every time (no randomness). Rows come
    play by play, in name order: Passages with ids (37 * per_play, length).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise CourseError(f"length={length!r}, expected an integer >= 2 (tokens per passage)")
    if isinstance(per_play, bool) or not isinstance(per_play, int) or per_play < 1:
        raise CourseError(f"per_play={per_play!r}, expected an integer >= 1 (passages per play)")
    splits = splits or load_splits()
    works = sorted((w for w in [*splits.train.values(), *splits.val.values()]
                    if w.kind in GENRES), key=lambda w: w.name)  # fmt: skip
    if not works:
        raise CourseError(
            "these splits hold no plays of a known genre: play_passages needs the Shakespeare "
            "corpus, load_splits() without a text file"
        )
    # No `length` tokens span more characters than this, so only that much text is encoded.
    most_chars = length * max(len(b) for b in tokenizer.vocab.values())
    chunks = []
    for work in works:
        text = work.text
        scene = _FIRST_SCENE.search(text)
        begin = scene.start() if scene else 0
        line_starts = [m.start() for m in re.finditer(r"^\S", text, re.M)]
        for k in range(per_play):  # the part: characters [lo, hi)
            lo = begin + k * (len(text) - begin) // per_play
            hi = begin + (k + 1) * (len(text) - begin) // per_play
            j = bisect.bisect_left(line_starts, (lo + hi) // 2)
            start = line_starts[j] if j < len(line_starts) and line_starts[j] < hi else lo
            chunks.append(text[start : min(hi, start + most_chars)])
    rows = []
    for i, enc in enumerate(tokenizer.fast().encode_batch(chunks)):
        if len(enc.ids) < length:
            work = works[i // per_play]
            raise CourseError(
                f"{work.name} is too short for per_play={per_play} passages of length={length} "
                f"that do not overlap: part {i % per_play + 1} of {per_play} has room for only "
                f"{len(enc.ids)} tokens after the line where its passage starts. Use fewer "
                f"or shorter passages (the default, 24 of 64 tokens, fits every play)"
            )
        rows.append(enc.ids[:length])
    labels = [genre_index(w.kind) for w in works for _ in range(per_play)]
    plays = tuple(w.name for w in works for _ in range(per_play))
    return Passages(torch.tensor(rows), torch.tensor(labels), plays)


def leave_plays_out_folds(
    plays: Iterable[str], k: int = 4
) -> list[tuple[frozenset[str], frozenset[str]]]:
    """k folds of (train_plays, test_plays): each play is tested in exactly one fold, never
    trained on in that fold, and every fold's test set holds plays of every genre present.

    Deterministic: genre by genre (in GENRES order), plays in name order are dealt to the folds
    in turn, the count running on across genres so that the folds differ in size by one at most
    (the 37 plays: 10, 9, 9, 9). ``plays`` may repeat names (``passages.plays``). k can be at
    most the number of plays of the rarest genre: 4 romances allow 4 folds.
    """
    names = sorted(set(plays))
    if unknown := [name for name in names if KIND.get(name) not in GENRES]:
        raise CourseError(
            f"{', '.join(unknown)}: not a play of a known genre; the names are those of "
            f"course_lib.data.KINDS (e.g. 'macbeth'), as Passages.plays holds them"
        )
    if not names:
        raise CourseError("no plays to fold: pass the plays' names, e.g. passages.plays")
    by_genre = {g: [n for n in names if KIND[n] == g] for g in GENRES}
    by_genre = {g: group for g, group in by_genre.items() if group}
    fewest = min(len(group) for group in by_genre.values())
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= fewest:
        rarest = min(by_genre, key=lambda g: len(by_genre[g]))
        raise CourseError(
            f"k={k!r} folds, expected an integer from 2 to {fewest}: each fold's test set needs "
            f"a play of every genre, and there are {fewest} plays of {rarest}. Use k <= {fewest}"
        )
    tests: list[set[str]] = [set() for _ in range(k)]
    dealt = 0
    for group in by_genre.values():
        for name in group:
            tests[dealt % k].add(name)
            dealt += 1
    return [(frozenset(names) - test, frozenset(test)) for test in tests]


# ---------------------------------------------------------------------------------------------
# The scores: macro-F1 and the confusion matrix.


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int = 4) -> Tensor:
    """Counts (n_classes, n_classes): row = the true class, column = the predicted one, so
    ``cm[i, j]`` passages of class i were called j and the diagonal holds the right answers."""
    pred, target = _check_labels(pred, target, n_classes)
    counts = torch.bincount(target * n_classes + pred, minlength=n_classes * n_classes)
    return counts.view(n_classes, n_classes)


def f1_per_class(pred: Tensor, target: Tensor, n_classes: int = 4) -> Tensor:
    """(n_classes,) each class's F1 = 2 TP / (2 TP + FP + FN); 0 for a class neither predicted
    nor present (scikit-learn's ``f1_score(..., average=None, zero_division=0)``)."""
    cm = confusion_matrix(pred, target, n_classes).double()
    tp = cm.diag()
    denominator = cm.sum(0) + cm.sum(1)  # (TP + FP) + (TP + FN)
    return torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), 0.0)


def macro_f1(pred: Tensor, target: Tensor, n_classes: int = 4) -> float:
    """The mean over classes 0 .. n_classes - 1 of each class's F1 (``f1_per_class``).

    A class that is neither predicted nor present scores 0 and still counts in the mean, as in
    scikit-learn's ``f1_score(target, pred, labels=range(n_classes), average="macro",
    zero_division=0)``: a test set without a genre cannot reach 1.
    """
    return f1_per_class(pred, target, n_classes).mean().item()


def _check_labels(pred: Tensor, target: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    pred, target = torch.as_tensor(pred).long().flatten(), torch.as_tensor(target).long().flatten()
    if pred.shape != target.shape:
        raise CourseError(f"pred and target must be (N,) of one length, got {len(pred)} and "
                         f"{len(target)}")  # fmt: skip
    for name, t in (("pred", pred), ("target", target)):
        if t.numel() and (t.min() < 0 or t.max() >= n_classes):
            bad = t[(t < 0) | (t >= n_classes)][0].item()
            raise CourseError(
                f"{name} holds class {bad}, outside [0, {n_classes}): pass class indices (e.g. "
                f"logits.argmax(1)), and n_classes={len(GENRES)} for the genres"
            )
    return pred, target


# ---------------------------------------------------------------------------------------------
# Words alone, and linear probes: multinomial logistic regression.


def bag_of_tokens(ids: Tensor, vocab_size: int) -> Tensor:
    """ids (N, T) -> (N, vocab_size) float: how often each token occurs in each row, divided by
    T (each row sums to 1). Order is thrown away: what is left is the choice of words."""
    if ids.dim() != 2 or (ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size)):
        raise CourseError(f"ids must be (N, T) token ids in [0, {vocab_size}), got shape "
                         f"{tuple(ids.shape)}")  # fmt: skip
    counts = torch.zeros(len(ids), vocab_size).scatter_add_(1, ids, torch.ones(ids.shape))
    return counts / ids.size(1)


def class_weights(labels: Tensor, n_classes: int = 4) -> Tensor:
    """(n_classes,) weights N / (n_classes * count_c), scikit-learn's "balanced": each class
    then weighs as much in a weighted loss as if the classes were equally common (the 4
    romances as much as the 12 comedies). A class absent from labels gets weight 0."""
    counts = torch.bincount(torch.as_tensor(labels).long(), minlength=n_classes).double()
    if len(counts) > n_classes:
        raise CourseError(f"labels hold class {len(counts) - 1}, outside [0, {n_classes})")
    weights = counts.sum() / (n_classes * counts)
    return torch.where(counts > 0, weights, 0.0).float()


def fit_linear(
    features: Tensor,
    labels: Tensor,
    n_classes: int = 4,
    weight_decay: float = 1e-3,
    steps: int = 200,
) -> nn.Linear:
    """Multinomial logistic regression: a ``nn.Linear(D, n_classes)`` whose outputs on
    features (N, D) are the class scores, fitted on the whole batch.

    Each feature is first standardised (mean 0, std 1 over the rows given; a constant feature is
    left alone), so that ``weight_decay``, an L2 penalty ``weight_decay * sum(W**2)`` on the
    standardised weights, treats the features alike; the standardisation is then folded into
    the returned layer's weight and bias, which take raw features. The cross-entropy is
    class-weighted (``class_weights``), so a rare genre is not ignored. Starts from zero
    weights and runs ``steps`` iterations of L-BFGS: the same data give the same layer.
    """
    features = features.detach().double()
    labels = torch.as_tensor(labels).long()
    if features.dim() != 2 or len(features) != len(labels):
        raise CourseError(f"features must be (N, D) and labels (N,), got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")  # fmt: skip
    mean, std = features.mean(0), features.std(0)
    std = torch.where(std > 1e-12, std, 1.0)
    x = (features - mean) / std
    weight = torch.zeros(n_classes, x.size(1), dtype=torch.double, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.double, requires_grad=True)
    class_weight = class_weights(labels, n_classes).double()
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels, weight=class_weight)
        loss = loss + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    linear = nn.Linear(x.size(1), n_classes)
    with torch.no_grad():  # W ((f - mean) / std) + b  =  (W / std) f + (b - W (mean / std))
        linear.weight.copy_(weight / std)
        linear.bias.copy_(bias - weight @ (mean / std))
    return linear


def choose_weight_decay(
    features: Tensor,
    labels: Tensor,
    plays: Sequence[str],
    candidates: tuple[float, ...] = (1.0, 0.1, 0.01),
    k: int = 3,
) -> float:
    """The weight decay of ``candidates`` whose ``fit_linear`` has the best mean macro-F1 over
    ``k`` leave-plays-out folds of these rows alone: given a fold's training passages (features
    (N, D), labels (N,), the play of each), it is chosen without seeing that fold's test plays
    (nested cross-validation). Ties go to the first candidate, the strongest decay."""
    folds = leave_plays_out_folds(plays, k)

    def score(weight_decay: float) -> float:
        f1s = []
        for train_plays, _ in folds:
            rows = torch.tensor([p in train_plays for p in plays])
            linear = fit_linear(features[rows], labels[rows], weight_decay=weight_decay)
            f1s.append(macro_f1(linear(features[~rows]).argmax(1), labels[~rows]))
        return sum(f1s) / len(f1s)

    return max(candidates, key=score)


# ---------------------------------------------------------------------------------------------
# A classification head (finetune.add_classifier): batches, loss, predictions.


def classifier_batches(passages: Passages) -> BatchSource:
    """A batch source for ``train``: random rows of passages, ``(ids (B, T), lengths (B,),
    labels (B,))``, every length T (each row is all real tokens)."""

    def batches(batch_size: int, generator: torch.Generator) -> Batch:
        rows = torch.randint(len(passages), (batch_size,), generator=generator)
        ids = passages.ids[rows]
        return ids, torch.full((batch_size,), ids.size(1)), passages.labels[rows]

    return batches


def classifier_loss(weights: Tensor | None = None) -> LossFn:
    """A loss for ``train``: the cross-entropy of ``classify(net, ids, lengths)``, the scores at
    each row's last real token, against the labels; each class weighted by ``weights``
    (n_classes,) when given (``class_weights(train.labels)``)."""

    def loss(net: nn.Module, batch: Batch) -> Tensor:
        ids, lengths, labels = batch
        w = None if weights is None else weights.to(ids.device)
        return F.cross_entropy(classify(net, ids, lengths), labels, weight=w)

    return loss


@torch.no_grad()
def predict(model: nn.Module, passages: Passages, batch_size: int = 256) -> Tensor:
    """(N,) the predicted genre of each passage: the argmax of ``classify`` at its last token,
    with the model in eval mode (put back in the mode it was in)."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    out = []
    for ids in passages.ids.split(batch_size):
        ids = ids.to(device)
        lengths = torch.full((len(ids),), ids.size(1), device=device)
        out.append(classify(model, ids, lengths).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out)
