"""core.metrics against sklearn (run live) and against numbers computed once with NLTK, sacrebleu and
coco-caption (hard-coded below, so none of them is a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from mmassist.core.training.metrics import classification_report, cider_d, corpus_bleu, exact_match, normalize_answer, text_report

LABELS = ["cat", "dog", "bird", "fish"]


def _sklearn_report(y_true, y_pred, labels):
    per = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted",
                                               zero_division=0)
    return accuracy_score(y_true, y_pred), macro[2], weighted[2], per


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("case", ["missing_class", "never_predicted", "unknown_prediction"])
def test_classification_report_equals_sklearn(seed, case):
    rng = np.random.default_rng(seed)
    y_true = list(rng.choice(LABELS[:3], size=40))  # "fish" never occurs: recall is 0/0
    pred_pool = {"missing_class": LABELS, "never_predicted": LABELS[1:3],  # "cat" never predicted: 0/0
                 "unknown_prediction": LABELS + ["no idea"]}[case]  # a generated answer that is no label
    y_pred = [t if rng.random() < 0.5 else str(rng.choice(pred_pool)) for t in y_true]
    if case == "never_predicted":
        y_pred = [p if p != "cat" else "dog" for p in y_pred]
    report = classification_report(y_true, y_pred, LABELS)
    accuracy, macro_f1, weighted_f1, (precision, recall, f1, support) = _sklearn_report(y_true, y_pred, LABELS)
    assert report["n"] == 40
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["macro_f1"] == pytest.approx(macro_f1)
    assert report["weighted_f1"] == pytest.approx(weighted_f1)
    for i, label in enumerate(LABELS):
        row = report["per_class"][label]
        assert row == pytest.approx({"precision": precision[i], "recall": recall[i], "f1": f1[i],
                                     "support": support[i]})
        assert isinstance(row["support"], int)


def test_classification_report_edge_cases():
    empty = classification_report([], [], ["a", "b"])
    assert empty["n"] == 0 and empty["accuracy"] == empty["macro_f1"] == empty["weighted_f1"] == 0.0
    perfect = classification_report(["a", "b", "a"], ["a", "b", "a"], ["a", "b"])
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["weighted_f1"] == 1.0
    with pytest.raises(ValueError, match="2 true labels but 1 predictions"):
        classification_report(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="without repeats"):
        classification_report(["a"], ["a"], ["a", "a"])


@pytest.mark.parametrize("raw,normal", [
    ("The Cat!", "cat"),
    ("  an   apple,  please ", "apple please"),
    ("A.M.", "am"),
    ("Theatre of the absurd", "theatre of absurd"),  # articles only as whole words
    ("", ""),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match():
    refs = ["Two", ["a red car", "red automobile"], "yes", ["the dog"]]
    assert exact_match(refs, ["two.", "Red car", "no", "dogs"]) == 0.5
    assert exact_match(refs, ["2", "red automobile!", "YES", "The dog"]) == 0.75
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError, match="non-empty list"):
        exact_match([[]], ["x"])


# NLTK's corpus_bleu docstring example, built from the sentences of Papineni et al. 2002.
PAPINENI_REFS = [
    ["It is a guide to action that ensures that the military will forever heed Party commands",
     "It is the guiding principle which guarantees the military forces always being under the command of "
     "the Party",
     "It is the practical guide for the army always to heed the directions of the party"],
    ["he was interested in world history because he read the book"],
]
PAPINENI_PREDS = ["It is a guide to action which ensures that the military always obeys the commands of the party",
                  "he read the book because he was interested in world history"]
# Short punctuated captions: a brevity penalty and no 3-gram match anywhere in the corpus.
SHORT_REFS = [["A man is riding a horse on the beach.", "A person rides a brown horse along the sea shore."],
              ["Two dogs play with a red ball in the park!", "Dogs are chasing a ball, on the grass."],
              ["A woman slices tomatoes in the kitchen.", "Someone is cutting vegetables."]]
SHORT_PREDS = ["a man rides a horse.", "two dogs chase a ball", "a woman is cutting tomatoes"]


@pytest.mark.parametrize("refs,preds,plain,smoothed", [
    # Computed once on our tokens (lower case, punctuation split off) with nltk 3.10.4
    # corpus_bleu(..., smoothing_function=SmoothingFunction().method2 for "smoothed") and with
    # sacrebleu 2.6.0 corpus_bleu(tokenize="none", smooth_method="none" / "add-k", smooth_value=1);
    # the two agree to 1e-15. NLTK's docstring gives 0.5920... for the first.
    (PAPINENI_REFS, PAPINENI_PREDS, 0.5920778868801042, 0.6108780048582715),
    (SHORT_REFS, SHORT_PREDS, 0.0, 0.15915562515529452),  # NLTK: ~1e-154 (float floor), sacrebleu: 0.0
])
def test_bleu_matches_nltk_and_sacrebleu(refs, preds, plain, smoothed):
    assert corpus_bleu(refs, preds, smooth=False) == pytest.approx(plain, abs=1e-12)
    assert corpus_bleu(refs, preds) == pytest.approx(smoothed, abs=1e-12)


def test_bleu_by_hand():
    # A prediction identical to one of its references (case aside) scores 1.
    identical = [refs[0].upper() for refs in PAPINENI_REFS]
    assert corpus_bleu(PAPINENI_REFS, identical, smooth=False) == pytest.approx(1.0)
    assert corpus_bleu(PAPINENI_REFS, identical) == pytest.approx(1.0)
    # Papineni et al.'s modified unigram precision: "the" is clipped at its count in a reference, 2/7.
    the = corpus_bleu([["The cat is on the mat.", "There is a cat on the mat."]], ["the the the the the the the"],
                      max_n=1)
    assert the == pytest.approx(2 / 7)
    # Brevity penalty exp(1 - r/c), with every n-gram of the prediction matched.
    assert corpus_bleu([["the cat sat on the mat"]], ["the cat sat"], max_n=3, smooth=False) == pytest.approx(
        math.exp(1 - 6 / 3))
    # The closest reference length counts: no penalty when one reference is as short.
    assert corpus_bleu([["the cat sat on the mat", "the cat sat"]], ["the cat sat"], max_n=3) == pytest.approx(1.0)
    # Smoothing lifts a corpus too short for 4-grams above zero; unsmoothed it is 0.
    assert corpus_bleu(["the cat sat"], ["the cat sat"], smooth=False) == 0.0
    assert corpus_bleu(["the cat sat"], ["the cat sat"]) == pytest.approx(1.0)


def test_bleu_empty_and_bad_input():
    assert corpus_bleu([["a cat"]], [""]) == 0.0
    assert corpus_bleu([], []) == 0.0
    assert corpus_bleu(["a cat on a mat"], ["a cat on a mat"]) == corpus_bleu([["a cat on a mat"]], ["a cat on a mat"])
    with pytest.raises(ValueError, match="1 references but 2 predictions"):
        corpus_bleu([["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="max_n=0"):
        corpus_bleu([["a"]], ["a"], max_n=0)


CIDER_REFS = [
    ["a man is riding a horse on the beach", "a person rides a brown horse along the shore",
     "a man on horseback at the beach", "someone riding a horse near the ocean waves"],
    ["two dogs play with a red ball in the park", "dogs are chasing a ball on the grass",
     "two puppies playing fetch in a park"],
    ["a woman slices tomatoes in the kitchen", "someone is cutting vegetables on a board",
     "a lady chopping red tomatoes with a knife", "a woman prepares food in a kitchen",
     "a person cuts tomatoes on a cutting board"],
    ["a red double decker bus on a city street", "a bus drives down a busy road",
     "a large red bus parked by the sidewalk"],
    ["a cat sleeping on a laptop keyboard", "a gray cat lying on a computer",
     "a kitten naps on top of an open laptop"],
]
CIDER_PREDS = ["a man riding a horse on the beach", "two dogs chasing a ball in the park",
               "a woman cutting tomatoes", "a bus", "a cat is sleeping on a laptop keyboard on a desk in an office"]


def test_cider_d_matches_coco_caption():
    # Computed once with pycocoevalcap 1.2 (PyPI; coco-caption's cider/cider_scorer.py),
    # Cider().compute_score(gts, res) on these lower-case, punctuation-free captions.
    # Per image: 3.002881068659176, 2.618523539688271, 1.05338870485674, 0.9139631865249376, 1.0654855164587032.
    assert cider_d(CIDER_REFS, CIDER_PREDS) == pytest.approx(1.7308484032375655, abs=1e-12)
    # An unrelated caption scores 0 for its image (pycocoevalcap: 0.0; corpus 1.1302721895057304).
    unrelated = ["purple elephant juggling seven teacups"] + CIDER_PREDS[1:]
    assert cider_d(CIDER_REFS, unrelated) == pytest.approx(1.1302721895057304, abs=1e-12)
    assert cider_d(CIDER_REFS, [""] + CIDER_PREDS[1:]) == pytest.approx(1.1302721895057304, abs=1e-12)
    # Case and punctuation are dropped, as coco-caption's tokenizer does (pycocoevalcap: 7.5 on the
    # cleaned text; "two dogs" has no 3- or 4-grams, so half marks).
    assert cider_d([["A Man, riding a horse!"], ["two dogs."]], ["a man riding a HORSE", "Two dogs"]) == 7.5


def test_cider_d_limits():
    # Each prediction equal to all its references, captions distinct across images: 10 (pycocoevalcap: 10.0).
    firsts = [refs[0] for refs in CIDER_REFS]
    assert cider_d([[r] * 3 for r in firsts], firsts) == pytest.approx(10.0)
    # The same caption for every image: every idf is log(N) - log(N) = 0 (pycocoevalcap: 0.0).
    assert cider_d([["a dog runs on the grass"]] * 3, ["a dog runs on the grass"] * 3) == 0.0
    assert cider_d([CIDER_REFS[0]], [CIDER_PREDS[0]]) == 0.0  # one image: idf = log(1) - ... = 0
    assert cider_d([], []) == 0.0
    with pytest.raises(ValueError, match="references\\[0\\]"):
        cider_d([[]], ["a cat"])


def test_text_report():
    report = text_report(CIDER_REFS, CIDER_PREDS)
    assert report == pytest.approx({"exact_match": 0.0, "bleu": corpus_bleu(CIDER_REFS, CIDER_PREDS),
                                    "cider_d": 1.7308484032375655, "n": 5})
    vqa = text_report(["yes", "Two", ["red", "dark red"]], ["Yes.", "2", "dark red"])
    assert vqa["exact_match"] == pytest.approx(2 / 3) and vqa["n"] == 3
