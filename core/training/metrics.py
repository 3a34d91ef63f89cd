"""Evaluation metrics for fine-tuning: a classification report, an entity report, exact match, BLEU and CIDEr-D.

Pure Python. Each metric follows one published reference so its numbers can be compared with
papers: sklearn for classification (``zero_division=0``), seqeval for entities, the SQuAD script for answer
normalisation, Papineni et al. 2002 for BLEU and coco-caption's ``cider_scorer.py`` for CIDEr-D.
Wherever a ratio would divide by zero the metric gives 0.0.

A reference may be a string or a list of strings (several acceptable answers or captions).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence, Union

from mmassist.core.runtime.tags import entity_spans

References = Sequence[Union[str, Sequence[str]]]

_BLEU_TOKEN = re.compile(r"\w+|[^\w\s]")  # a word, or one punctuation character
_CIDER_TOKEN = re.compile(r"\w+")  # words only: coco-caption drops punctuation before CIDEr
_ARTICLE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _check_lengths(first: Sequence, second: Sequence, first_name: str, second_name: str) -> None:
    if len(first) != len(second):
        raise ValueError(f"{len(first)} {first_name} but {len(second)} {second_name}; "
                         f"give exactly one per example")


def _reference_lists(references: References, predictions: Sequence[str]) -> list[list[str]]:
    """Every example's references as a non-empty list of strings (a bare string is one reference)."""
    _check_lengths(references, predictions, "references", "predictions")
    out = []
    for i, refs in enumerate(references):
        # A bare string is itself a Sequence[str]; never read it as one reference per character.
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}]={refs!r}; give a string or a non-empty list of strings")
        out.append(refs)
    return out


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro and support-weighted F1, and precision/recall/F1/support for each label.

    Equal to sklearn's ``accuracy_score`` and ``precision_recall_fscore_support(labels=labels,
    zero_division=0)``. A value outside ``labels`` (say a generated answer that is no label) counts
    in ``accuracy`` and ``n`` as a miss but has no row of its own.
    """
    _check_lengths(y_true, y_pred, "true labels", "predictions")
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels!r}; give a non-empty list without repeats")
    n_true, n_pred = Counter(y_true), Counter(y_pred)
    hits = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    per_class = {}
    for label in labels:
        per_class[label] = {
            "precision": _ratio(hits[label], n_pred[label]),
            "recall": _ratio(hits[label], n_true[label]),
            "f1": _ratio(2 * hits[label], n_true[label] + n_pred[label]),  # = 2PR / (P + R)
            "support": n_true[label],
        }
    f1s = [row["f1"] for row in per_class.values()]
    supports = [row["support"] for row in per_class.values()]
    return {
        "accuracy": _ratio(sum(hits.values()), len(y_true)),
        "macro_f1": sum(f1s) / len(f1s),
        "weighted_f1": _ratio(sum(f * s for f, s in zip(f1s, supports)), sum(supports)),
        "n": len(y_true),
        "per_class": per_class,
    }


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD/VQA)."""
    s = s.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLE.sub(" ", s).split())


def exact_match(references: References, predictions: Sequence[str]) -> float:
    """The fraction of predictions equal to one of their references, after :func:`normalize_answer`."""
    refs = _reference_lists(references, predictions)
    hits = sum(normalize_answer(p) in {normalize_answer(r) for r in rs} for rs, p in zip(refs, predictions))
    return _ratio(hits, len(predictions))


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(references: References, predictions: Sequence[str], max_n: int = 4,
                smooth: bool = True) -> float:
    """Corpus-level BLEU (Papineni et al. 2002), in [0, 1].

    Text is lower-cased and split into words and single punctuation characters. Clipped n-gram
    matches and n-gram totals are summed over the corpus before the geometric mean; the brevity
    penalty uses, per example, the reference length closest to the prediction's (the shorter on a
    tie). ``smooth`` adds one to the matches and the totals of every order n > 1 (Lin & Och 2004;
    NLTK's ``method2``, sacrebleu's ``add-k`` with k=1), so a short corpus with no 4-gram match
    still scores above zero. With no unigram match (or only empty predictions) BLEU is 0.
    """
    if max_n < 1:
        raise ValueError(f"max_n={max_n}; give an n-gram order of at least 1")
    refs = _reference_lists(references, predictions)
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for rs, pred in zip(refs, predictions):
        hyp = _BLEU_TOKEN.findall(pred.lower())
        ref_tokens = [_BLEU_TOKEN.findall(r.lower()) for r in rs]
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in ref_tokens), key=lambda length: (abs(length - len(hyp)), length))
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            max_ref = Counter()
            for r in ref_tokens:
                max_ref |= _ngrams(r, n)  # Counter "|" keeps each n-gram's highest count
            matches[n - 1] += sum((counts & max_ref).values())  # "&" clips by that count
            totals[n - 1] += sum(counts.values())
    if matches[0] == 0:
        return 0.0
    log_precision = 0.0
    for n, (m, t) in enumerate(zip(matches, totals), start=1):
        if smooth and n > 1:
            m, t = m + 1, t + 1
        if m == 0:
            return 0.0
        log_precision += math.log(m / t) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def _cider_counts(text: str, n: int) -> tuple[Counter, int]:
    """All 1..n-grams of a caption, and its length as coco-caption measures it."""
    tokens = _CIDER_TOKEN.findall(text.lower())
    counts = Counter()
    for k in range(1, n + 1):
        counts.update(_ngrams(tokens, k))
    # coco-caption measures length in bigrams (words - 1): the same delta whenever both have words.
    return counts, len(tokens)


def cider_d(references: References, predictions: Sequence[str], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015) as coco-caption's ``cider_scorer.py`` computes it; 10 is a perfect score.

    Each caption becomes one tf-idf vector per n-gram order, with idf = log(N) - log(max(1, df)), N
    the number of examples and df the number of examples whose references contain the n-gram. A
    prediction's score against one reference is the cosine similarity with the prediction's weights
    clipped at the reference's, times the Gaussian length penalty exp(-delta^2 / (2 sigma^2)); it is
    averaged over the n orders and the references, times 10, and then averaged over examples.
    Text is lower-cased and punctuation dropped, as coco-caption's tokenizer does. With one example
    every idf is 0, and so is the score.
    """
    if n < 1:
        raise ValueError(f"n={n}; give an n-gram order of at least 1")
    refs = [[_cider_counts(r, n) for r in rs] for rs in _reference_lists(references, predictions)]
    if not refs:
        return 0.0
    df = Counter(g for rs in refs for g in set().union(*(counts for counts, _ in rs)))
    log_n = math.log(len(refs))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vec = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, df[gram])))
        return vec, [math.sqrt(sum(w * w for w in v.values())) for v in vec]

    scores = []
    for pred, rs in zip(predictions, refs):
        hyp_counts, hyp_len = _cider_counts(pred, n)
        hyp, hyp_norm = tfidf(hyp_counts)
        total = 0.0
        for ref_counts, ref_len in rs:
            ref, ref_norm = tfidf(ref_counts)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                dot = sum(min(w, ref[k].get(g, 0.0)) * ref[k].get(g, 0.0) for g, w in hyp[k].items())
                total += penalty * _ratio(dot, hyp_norm[k] * ref_norm[k])
        scores.append(10.0 * total / (n * len(rs)))
    return sum(scores) / len(scores)


def text_report(references: References, predictions: Sequence[str]) -> dict:
    """Exact match, BLEU-4 and CIDEr-D of generated text (captioning, VQA), and the number of examples."""
    refs = _reference_lists(references, predictions)
    return {
        "exact_match": exact_match(refs, predictions),
        "bleu": corpus_bleu(refs, predictions),
        "cider_d": cider_d(refs, predictions),
        "n": len(predictions),
    }


def entity_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall and F1, micro-averaged and per entity type, and the share of words
    tagged right, for sentences of tags (IO or BIO; :func:`mmassist.core.runtime.tags.entity_spans`).

    An entity counts as found only when a predicted one has both its span and its type (seqeval's
    default-mode ``classification_report``: ``f1`` here is its micro average).
    """
    _check_lengths(y_true, y_pred, "true tag sequences", "predictions")
    true_spans: set[tuple[int, str, int, int]] = set()
    pred_spans: set[tuple[int, str, int, int]] = set()
    right_words = words = 0
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        _check_lengths(t, p, f"true tags in sentence {i}", "predicted tags")
        true_spans.update((i, *s) for s in entity_spans(t))
        pred_spans.update((i, *s) for s in entity_spans(p))
        right_words += sum(a == b for a, b in zip(t, p))
        words += len(t)
    hits = true_spans & pred_spans

    def scores(true: set, pred: set, hit: set) -> dict[str, float]:
        return {"precision": _ratio(len(hit), len(pred)), "recall": _ratio(len(hit), len(true)),
                "f1": _ratio(2 * len(hit), len(true) + len(pred)), "support": len(true)}

    types = sorted({s[1] for s in true_spans | pred_spans})
    per_class = {k: scores(*({s for s in group if s[1] == k} for group in (true_spans, pred_spans, hits)))
                 for k in types}
    micro = scores(true_spans, pred_spans, hits)
    return {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1"],
            "macro_f1": sum(r["f1"] for r in per_class.values()) / len(per_class) if per_class else 0.0,
            "accuracy": _ratio(right_words, words), "entities": micro["support"], "n": len(y_true),
            "per_class": per_class}
