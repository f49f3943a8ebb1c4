"""course_lib.genre and course_lib.genre_text: passages of whole plays, folds that leave plays
out, the scores (macro-F1 against values computed by hand, as scikit-learn's
f1_score(average="macro", zero_division=0) defines them), logistic regression, and the two ways a
GPT answers: a classification head and text to text, whose loss is checked against
F.cross_entropy over the answer's positions alone.

Models are random and tiny, and the text-to-text tests use a tiny tokenizer trained here; only
play_passages reads the real corpus (prepared by the test command, like tests/test_finetune.py).
"""

from __future__ import annotations

import random
import re

import pytest
import torch
import torch.nn.functional as F

from course_lib import data
from course_lib.checkpoint import run_differences
from course_lib.data import KIND, Splits, Work
from course_lib.finetune import add_classifier, classify
from course_lib.genre import (
    GENRES,
    Passages,
    bag_of_tokens,
    choose_weight_decay,
    class_weights,
    classifier_batches,
    classifier_loss,
    confusion_matrix,
    f1_per_class,
    fit_linear,
    genre_index,
    leave_plays_out_folds,
    macro_f1,
    play_passages,
    predict,
)
from course_lib.genre_text import ANSWER_PROMPT, genre_example, score_genres, text_batches
from course_lib.model import GPT, IGNORE_INDEX, GPTConfig
from course_lib.tokenizer import BPETokenizer
from course_lib.train import next_token_loss
from course_lib.train_state import describe_run

PLAYS = sorted(name for name, kind in KIND.items() if kind in GENRES)  # the 37 plays
ONE_OF_EACH = ("hamlet", "tempest", "henry_v", "twelfth_night")  # tragedy, romance, ...


@pytest.fixture(scope="module")
def tiny_tokenizer() -> BPETokenizer:
    """300 tokens: the genre words come out in pieces of different lengths, so padding shows."""
    tok = BPETokenizer()
    tok.train("Genre: comedy. " * 30 + "history, tragedy, romance. " * 2 + "To be. " * 10, 280)
    return tok


def tiny_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))


def toy_passages(n: int = 8, T: int = 6, vocab_size: int = 100) -> Passages:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (n, T), generator=g)
    plays = tuple(ONE_OF_EACH[i % 4] for i in range(n))
    return Passages(ids, torch.tensor([genre_index(KIND[p]) for p in plays]), plays)


# --- genres ------------------------------------------------------------------------------------


def test_genres_are_the_folio_kinds_without_the_poems():
    assert GENRES == ("comedy", "history", "tragedy", "romance")
    assert [genre_index(g) for g in GENRES] == [0, 1, 2, 3]
    assert {KIND[p] for p in PLAYS} == set(GENRES) and len(PLAYS) == 37


def test_an_unknown_genre_label_is_refused_naming_the_genres():
    with pytest.raises(ValueError, match=r"unknown genre 'tragic': expected one of comedy, "
                                         r"history, tragedy, romance"):  # fmt: skip
        genre_index("tragic")
    with pytest.raises(ValueError, match="unknown genre 'poem'"):
        genre_index("poem")


# --- folds -------------------------------------------------------------------------------------


def test_folds_test_every_play_once_and_never_train_on_it():
    folds = leave_plays_out_folds(PLAYS, k=4)
    assert len(folds) == 4
    for train_plays, test_plays in folds:
        assert not train_plays & test_plays
        assert train_plays | test_plays == set(PLAYS)
    tested = [p for _, test_plays in folds for p in test_plays]
    assert sorted(tested) == PLAYS  # each exactly once
    assert sorted(len(t) for _, t in folds) == [9, 9, 9, 10]


def test_every_fold_tests_every_genre():
    for k in (2, 3, 4):
        for _, test_plays in leave_plays_out_folds(PLAYS, k=k):
            assert {KIND[p] for p in test_plays} == set(GENRES), k


def test_folds_are_the_same_whatever_the_order_or_repeats_of_the_names():
    shuffled = PLAYS * 3
    random.Random(0).shuffle(shuffled)
    assert leave_plays_out_folds(shuffled) == leave_plays_out_folds(PLAYS)


def test_more_folds_than_romances_or_an_unknown_play_is_refused():
    with pytest.raises(ValueError, match=r"k=5 folds, expected an integer from 2 to 4: .* there "
                                         r"are 4 plays of romance"):  # fmt: skip
        leave_plays_out_folds(PLAYS, k=5)
    with pytest.raises(ValueError, match=r"sonnets: not a play of a known genre"):
        leave_plays_out_folds([*PLAYS, "sonnets"])


# --- scores ------------------------------------------------------------------------------------

# By hand: class 0 TP 2 FP 1 FN 1 -> F1 4/6; class 1 TP 2 FP 2 FN 0 -> 4/6; class 2 TP 1 FP 0
# FN 1 -> 2/3; class 3 never predicted, TP 0 FN 1 -> 0. Macro: (3 * 2/3 + 0) / 4 = 0.5.
PRED = torch.tensor([0, 0, 1, 1, 1, 2, 0, 1])
TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])


def test_macro_f1_matches_values_computed_by_hand():
    assert macro_f1(PRED, TARGET) == pytest.approx(0.5, abs=1e-12)
    assert macro_f1(TARGET, TARGET) == 1.0
    always_comedy = torch.zeros(8, dtype=torch.long)  # F1 of comedy 2*3/(2*3+5+0) = 6/11
    assert macro_f1(always_comedy, TARGET) == pytest.approx(6 / 11 / 4, abs=1e-12)


def test_f1_per_class_gives_each_genre_its_f1_and_macro_f1_is_their_mean():
    # 2 TP / (2 TP + FP + FN): comedy 4 / (4 + 1 + 1), history 4 / (4 + 2 + 0), tragedy
    # 2 / (2 + 0 + 1), romance (one passage, never predicted) 0
    f1 = f1_per_class(PRED, TARGET)
    assert f1.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0], abs=1e-12)
    assert f1.mean().item() == pytest.approx(macro_f1(PRED, TARGET), abs=1e-12)


def test_choose_weight_decay_picks_by_inner_folds_of_the_rows_it_is_given():
    plays = [p for genre in GENRES for p in sorted(data.KINDS[genre])[:3] for _ in range(10)]
    labels = torch.tensor([genre_index(KIND[p]) for p in plays])
    g = torch.Generator().manual_seed(0)
    features = torch.randn(len(plays), 8, generator=g)
    features[:, 0] += 0.8 * labels  # one weakly informative feature among noise
    # a decay so strong that the weights stay near zero cannot use it; a light one can
    assert choose_weight_decay(features, labels, plays, candidates=(1e3, 1e-3)) == 1e-3
    assert choose_weight_decay(features, labels, plays, candidates=(1e-3, 1e3)) == 1e-3
    with pytest.raises(ValueError):  # 3 plays of each genre allow 3 folds, not 4
        choose_weight_decay(features, labels, plays, k=4)


def test_macro_f1_counts_a_class_neither_predicted_nor_present_as_zero_like_sklearn():
    # f1_score(TARGET, PRED, labels=range(5), average="macro", zero_division=0) = 2 / 5
    assert macro_f1(PRED, TARGET, n_classes=5) == pytest.approx(0.4, abs=1e-12)
    with pytest.raises(ValueError, match=r"pred holds class 4, outside \[0, 4\)"):
        macro_f1(PRED + 2, TARGET)


def test_confusion_matrix_rows_are_true_classes_columns_predicted():
    cm = confusion_matrix(PRED, TARGET)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0]]
    assert cm.sum() == len(TARGET)
    assert cm.sum(1).tolist() == torch.bincount(TARGET, minlength=4).tolist()  # true counts
    assert cm.sum(0).tolist() == torch.bincount(PRED, minlength=4).tolist()  # predicted counts


# --- words alone, and logistic regression ------------------------------------------------------


def test_bag_of_tokens_rows_are_frequencies_summing_to_one():
    ids = torch.tensor([[3, 3, 1, 0], [2, 2, 2, 2]])
    bag = bag_of_tokens(ids, vocab_size=5)
    assert bag.tolist() == [[0.25, 0.25, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]]
    torch.testing.assert_close(bag.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match=r"token ids in \[0, 3\)"):
        bag_of_tokens(ids, vocab_size=3)


def test_class_weights_are_inverse_frequencies_like_sklearn_balanced():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])  # N / (n_classes * count): 6/12, 6/4, 6/8, absent
    torch.testing.assert_close(class_weights(labels), torch.tensor([0.5, 1.5, 0.75, 0.0]))


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four separable clouds in 5 dimensions, 30 + 30 + 30 + 6 points (a rare class)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0] * 30 + [1] * 30 + [2] * 30 + [3] * 6)
    centres = 4 * torch.eye(4, 5)
    return centres[labels] + torch.randn(len(labels), 5, generator=g), labels


def test_fit_linear_separates_separable_classes_the_same_way_every_time():
    features, labels = blobs()
    linear = fit_linear(features, labels)
    assert torch.equal(linear(features).argmax(1), labels)
    again = fit_linear(features, labels)
    assert torch.equal(linear.weight, again.weight) and torch.equal(linear.bias, again.bias)


def test_fit_linear_standardises_so_the_units_of_a_feature_do_not_matter():
    features, labels = blobs()
    scaled = features * torch.tensor([1000.0, 1.0, 0.001, 1.0, 1.0])
    torch.testing.assert_close(fit_linear(scaled, labels)(scaled), fit_linear(features, labels)(
        features), atol=1e-3, rtol=1e-3)  # fmt: skip


# --- a classification head ---------------------------------------------------------------------


def test_classifier_batches_are_random_rows_with_their_labels_and_full_lengths():
    passages = toy_passages()
    draw = classifier_batches(passages)
    ids, lengths, labels = draw(5, torch.Generator().manual_seed(0))
    assert ids.shape == (5, 6) and lengths.tolist() == [6] * 5
    for row, label in zip(ids, labels):
        match = (passages.ids == row).all(1)
        assert match.any() and passages.labels[match][0] == label
    again = draw(5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((ids, lengths, labels), again))


def test_classifier_loss_of_a_padded_batch_equals_the_loss_of_each_passage_alone():
    model = add_classifier(tiny_gpt(100), n_classes=4).eval()
    ids = toy_passages(3).ids
    lengths, labels = torch.tensor([6, 4, 2]), torch.tensor([2, 0, 3])
    padded = ids.clone()
    for row, n in enumerate(lengths):
        padded[row, n:] = 99  # whatever fills the rest
    alone = torch.stack([F.cross_entropy(model(ids[i : i + 1, :n]).logits[:, -1], labels[i : i + 1])
                         for i, n in enumerate(lengths)])  # fmt: skip
    loss = classifier_loss()(model, (padded, lengths, labels))
    torch.testing.assert_close(loss, alone.mean(), atol=1e-6, rtol=0)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])  # weighted mean: sum w_y l / sum w_y
    weighted = classifier_loss(weights)(model, (padded, lengths, labels))
    expected = (weights[labels] * alone).sum() / weights[labels].sum()
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=0)


def test_predict_is_the_argmax_of_classify_in_eval_mode_batch_by_batch():
    model = add_classifier(tiny_gpt(100), n_classes=4).train()
    passages = toy_passages(10)
    with torch.no_grad():
        expected = classify(model.eval(), passages.ids, torch.full((10,), 6)).argmax(1)
    model.train()
    assert torch.equal(predict(model, passages, batch_size=3), expected)
    assert model.training  # put back


def test_select_keeps_the_rows_of_the_named_plays():
    passages = toy_passages(8)
    picked = passages.select({"tempest", "twelfth_night"})
    assert len(picked) == 4 and set(picked.plays) == {"tempest", "twelfth_night"}
    assert torch.equal(picked.ids, passages.ids[[1, 3, 5, 7]])
    assert torch.equal(picked.labels, passages.labels[[1, 3, 5, 7]])
    with pytest.raises(ValueError, match="no passages of macbeth"):
        passages.select(["macbeth"])


# --- text to text ------------------------------------------------------------------------------


def test_genre_example_trains_on_the_answer_tokens_alone(tiny_tokenizer):
    tok = tiny_tokenizer
    passage = torch.tensor(tok.encode("To be, or not"))
    x, y = genre_example(passage, genre_index("tragedy"), tok)
    prompt, answer = tok.encode(ANSWER_PROMPT), [*tok.encode(" tragedy"), tok.eot_id]
    assert x.tolist() == [*passage.tolist(), *prompt, *answer[:-1]]
    answered = (y != IGNORE_INDEX).nonzero().flatten().tolist()
    first = len(passage) + len(prompt) - 1  # the prompt's last token predicts the answer's first
    assert answered == list(range(first, first + len(answer)))
    assert y[answered].tolist() == answer
    assert torch.equal(y[:-1][y[:-1] != IGNORE_INDEX], x[first + 1 :])  # y is x shifted


def test_the_model_loss_on_an_example_is_cross_entropy_over_the_answer_alone(tiny_tokenizer):
    tok = tiny_tokenizer
    model = tiny_gpt(tok.vocab_size).eval()
    x, y = genre_example(torch.tensor(tok.encode("or not to be")), genre_index("comedy"), tok)
    logits = model(x[None]).logits[0]
    keep = y != IGNORE_INDEX
    expected = F.cross_entropy(logits[keep], y[keep])
    torch.testing.assert_close(model(x[None], y[None]).loss, expected, atol=1e-6, rtol=0)


def test_text_batches_pad_x_with_end_of_text_and_y_with_ignore(tiny_tokenizer):
    tok = tiny_tokenizer
    lengths = {g: len(tok.encode(" " + g)) for g in GENRES}
    assert len(set(lengths.values())) > 1, lengths  # the answers differ in length here
    passages = toy_passages(8, vocab_size=256)
    x, y = text_batches(passages, tok)(8, torch.Generator().manual_seed(0))
    L = 6 + len(tok.encode(ANSWER_PROMPT)) + max(lengths.values())  # + <eot> - 1 shift
    assert x.shape == y.shape == (8, L)
    for xi, yi in zip(x, y):
        label = next(i for i, row in enumerate(passages.ids) if torch.equal(row, xi[:6]))
        ex, ey = genre_example(passages.ids[label], int(passages.labels[label]), tok)
        assert torch.equal(xi[: len(ex)], ex) and torch.equal(yi[: len(ey)], ey)
        assert (xi[len(ex) :] == tok.eot_id).all() and (yi[len(ey) :] == IGNORE_INDEX).all()


def test_score_genres_is_the_log_probability_of_each_answer(tiny_tokenizer):
    tok = tiny_tokenizer
    model = tiny_gpt(tok.vocab_size)
    bias = torch.zeros(tok.vocab_size)
    bias[[*tok.encode(" romance"), tok.eot_id]] = 20.0  # it likes romance, whatever it reads
    model.lm_head = torch.nn.Linear(16, tok.vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(bias)
    passages = toy_passages(3, vocab_size=256)
    scores = score_genres(model, passages, tok, batch_size=2)
    assert scores.shape == (3, 4)
    assert scores.argmax(1).tolist() == [genre_index("romance")] * 3
    logp = torch.log_softmax(bias, 0)  # every position: the same next-token distribution
    expected = [sum(logp[t] for t in [*tok.encode(" " + g), tok.eot_id]) for g in GENRES]
    torch.testing.assert_close(scores, torch.stack(expected).expand(3, 4), atol=1e-5, rtol=0)


def test_a_run_saved_when_text_batches_lived_in_genre_is_the_same_run(tiny_tokenizer):
    # Lesson 07's cached text-to-text runs name course_lib.genre, where text_batches was then.
    batches = text_batches(toy_passages(4, vocab_size=256), tiny_tokenizer)
    model = tiny_gpt(tiny_tokenizer.vocab_size)
    run = describe_run(model, {"train": batches, "val": batches}, next_token_loss)
    assert run["batches"]["train"] == "course_lib.genre_text.text_batches.<locals>.batches"
    old = "course_lib.genre.text_batches.<locals>.batches"
    assert run_differences({"run": {**run, "batches": {"train": old, "val": old}}}, run, "") == []
    heads = "course_lib.genre.classifier_batches.<locals>.batches"  # another run, still
    other = {**run, "batches": {"train": heads, "val": old}}
    assert len(run_differences({"run": other}, run, "wanted")) == 1


# --- the passages of the real plays ------------------------------------------------------------


def test_play_passages_are_24_windows_of_every_play_with_its_genre(splits):
    tok = data.course_tokenizer()
    passages = play_passages(tok, length=64, per_play=24, splits=splits)
    assert passages.ids.shape == (37 * 24, 64) and passages.ids.dtype == torch.long
    assert sorted(set(passages.plays)) == PLAYS
    assert all(passages.plays.count(p) == 24 for p in PLAYS)
    assert [GENRES[i] for i in passages.labels] == [KIND[p] for p in passages.plays]
    works = {**splits.train, **splits.val}
    for row, play in zip(passages.ids, passages.plays):
        text = tok.decode(row.tolist())
        body = works[play].text
        cast_list_ends = re.search(r"^\s*scene", body, re.M | re.I).start()
        assert text in body and body.find(text) > cast_list_ends
        assert body[body.find(text) - 1] == "\n"  # at the start of a line


def test_a_play_too_short_for_the_passages_is_named(tiny_tokenizer):
    text = "SCENE: Scotland.\nTo be, or not to be.\n" * 3
    short = Splits({}, {"macbeth": Work("macbeth", "Macbeth", "tragedy", "val", text)}, {})
    with pytest.raises(ValueError, match=r"macbeth is too short for per_play=4 passages of "
                                         r"length=64"):  # fmt: skip
        play_passages(tiny_tokenizer, length=64, per_play=4, splits=short)
    with pytest.raises(ValueError, match=r"length=1, expected an integer >= 2"):
        play_passages(tiny_tokenizer, length=1, splits=short)
