"""The seed's text tasks through ``core.finetune`` against a plain transformers loop over the same encoder.

Sentiment on SST-2 (``examples/configs/sst2_sentiment.yaml``): ours is the config (MiniLM, a one-layer decoder
and the classification head), theirs ``AutoModelForSequenceClassification`` on the same MiniLM; both train one
epoch on the same 2,000 training sentences (batch 32, AdamW, linear warm-up and decay, MiniLM at 5e-5 and the
new parts at 1e-3 on both sides), with no evaluation during training, and are tested on SST-2's dev split.
Reported: dev accuracy of each and the CPU seconds of training and testing, ours over theirs.

Named entities on wikigold (``examples/configs/ner_wikigold.yaml``): ours is the config as shipped (MiniLM,
a one-layer decoder and the tag head, early stopping on dev); theirs is ``AutoModelForTokenClassification``
on the same MiniLM in a plain PyTorch loop (AdamW with weight decay, linear warm-up and decay, the first
piece of each word labelled, as transformers' ``run_ner`` example does), for the same epochs and batch
size, its best dev epoch kept. Both are scored on dev with the same entity-level F1
(:func:`mmassist.core.training.metrics.entity_report`, seqeval's definition).

Reported: each side's dev F1 (ours minus theirs) and the CPU seconds of its training (evaluations included),
ours over theirs.
The two runs take turns (theirs first), not interleaved: on a busy machine their times move apart.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Section, log, ratio

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "configs" / "ner_wikigold.yaml"
PLAIN_LR = 3.0e-4  # the encoder learning rate of our config; theirs trains the whole model with it (1e-4: 0.661)


SST2 = REPO / "examples" / "configs" / "sst2_sentiment.yaml"
SST2_SENTENCES = 2000


def run(quick: bool = False) -> Section:
    section = ner(quick)
    sentiment(quick, section)
    return section


def ner(quick: bool) -> Section:
    from mmassist import core
    from mmassist.core.data import load_examples

    cfg = core.FusionConfig.from_file(CONFIG)
    train = load_examples(cfg.data.train, cfg.task, cfg.data)
    dev = load_examples(cfg.data.validation, cfg.task, cfg.data)
    epochs = int(cfg.training.epochs)
    if quick:
        train, dev, epochs = train[:64], dev[:32], 1
    section = Section("tasks", "Text tasks: core.finetune vs a plain transformers loop over the same MiniLM")
    log(f"tasks: plain transformers token classification, {len(train)} sentences, {epochs} epochs")
    theirs_f1, theirs_cpu, theirs_wall = plain_token_classification(train, dev, epochs, cfg.training.batch_size,
                                                                    cfg.training.seed)
    log("tasks: core.finetune")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        overrides = {"training.epochs": epochs}
        if quick:
            overrides.update({"data.train": _write_conll(folder / "train.conll", train),
                              "data.validation": _write_conll(folder / "dev.conll", dev),
                              "training.eval_every": 4})
        start, start_cpu = time.perf_counter(), time.process_time()
        res = core.finetune(cfg, output_dir=folder / "run", progress=False, **overrides)
        ours_cpu, ours_wall = time.process_time() - start_cpu, time.perf_counter() - start
    ours_f1 = res.metrics["validation"]["f1"]
    section.keys["ner_f1_minus_plain_transformers"] = ours_f1 - theirs_f1
    section.keys["ner_cpu_time_vs_plain_transformers"] = ratio(ours_cpu, theirs_cpu)
    for name, f1, cpu, wall in (("core.finetune", ours_f1, ours_cpu, ours_wall),
                                ("transformers loop", theirs_f1, theirs_cpu, theirs_wall)):
        section.row(task="named entities (wikigold)", run=name, dev_score=round(f1, 4), cpu_s=round(cpu, 1),
                    wall_s=round(wall, 1))
    section.note(f"named entities: {len(train)} training sentences, {len(dev)} dev sentences, {epochs} epochs, "
                 f"batch {cfg.training.batch_size}; ours stopped at step {res.metrics['steps']} "
                 f"(best {res.metrics['best_step']}); the score is the entity F1")
    return section


def sentiment(quick: bool, section: Section) -> None:
    """SST-2: one epoch over the same sentences on both sides, tested on dev (see the module docstring)."""
    from mmassist import core
    from mmassist.core.data import load_examples

    cfg = core.FusionConfig.from_file(SST2)
    train = load_examples(cfg.data.train, cfg.task, cfg.data)[: 64 if quick else SST2_SENTENCES]
    dev = load_examples(cfg.data.test, cfg.task, cfg.data)[: 32 if quick else None]
    batch, epochs = cfg.training.batch_size, 1
    log(f"tasks: plain transformers sentence classification, {len(train)} sentences")
    theirs_acc, theirs_cpu = plain_sequence_classification(train, dev, cfg.task.labels, batch, epochs,
                                                           cfg.encoders["text"].lr, cfg.training.lr, cfg.training.seed)
    log("tasks: core.finetune classification")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = "".join(f"{e.text}\t{cfg.task.labels.index(e.label)}\n" for e in train)
        (folder / "train.tsv").write_text(rows, encoding="utf-8")
        (folder / "dev.tsv").write_text("".join(f"{e.text}\t{cfg.task.labels.index(e.label)}\n" for e in dev),
                                        encoding="utf-8")
        start = time.process_time()
        res = core.finetune(cfg, output_dir=folder / "run", progress=False, **{
            "data.train": str(folder / "train.tsv"), "data.test": str(folder / "dev.tsv"),
            "data.validation_fraction": 0.0, "training.epochs": epochs, "training.patience": None})
        ours_cpu = time.process_time() - start
    ours_acc = res.metrics["test"]["accuracy"]
    section.keys["sentiment_cpu_time_vs_plain_transformers"] = ratio(ours_cpu, theirs_cpu)
    section.keys["sentiment_accuracy_minus_plain_transformers"] = ours_acc - theirs_acc
    for name, acc, cpu in (("core.finetune", ours_acc, ours_cpu), ("transformers loop", theirs_acc, theirs_cpu)):
        section.row(task="sentiment (SST-2)", run=name, dev_score=round(acc, 4), cpu_s=round(cpu, 1), wall_s=None)
    section.note(f"sentiment: {len(train)} training sentences, {epochs} epoch, batch {batch}, tested on {len(dev)} "
                 "dev sentences; the score is the accuracy, the CPU time covers training and testing")


def _write_conll(path: Path, examples) -> str:
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in zip(e.words, e.tags)) for e in examples) + "\n",
                    encoding="utf-8")
    return str(path)


def plain_token_classification(train, dev, epochs: int, batch_size: int, seed: int) -> tuple[float, float, float]:
    """Best dev entity F1 over the epochs, CPU seconds and wall seconds of a plain transformers run."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from mmassist.core.hf import quiet_transformers
    from mmassist.core.runtime.tags import sort_tags
    from mmassist.core.training.metrics import entity_report
    from mmassist.plugins.text import default_model_path

    torch.manual_seed(seed)
    tags = sort_tags({t for e in [*train, *dev] for t in e.tags})
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    start, start_cpu = time.perf_counter(), time.process_time()
    with quiet_transformers():
        model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(tags))

    def batch_of(examples, with_labels: bool):
        enc = tokenizer([list(e.words) for e in examples], is_split_into_words=True, truncation=True,
                        max_length=128, padding=True, return_tensors="pt")
        labels = torch.full(enc["input_ids"].shape, -100)
        for b, e in enumerate(examples):
            previous = None
            for t, w in enumerate(enc.word_ids(b)):
                if w is not None and w != previous:
                    labels[b, t] = tags.index(e.tags[w])
                previous = w
        return enc, labels

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=PLAIN_LR)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    best = 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for s in range(0, len(order), batch_size):
            enc, labels = batch_of([train[i] for i in order[s: s + batch_size]], True)
            _update(model, model(**enc, labels=labels).loss, optimizer, scheduler)
        model.eval()
        predicted = []
        with torch.no_grad():
            for s in range(0, len(dev), 32):
                chunk = dev[s: s + 32]
                enc, labels = batch_of(chunk, True)
                best_tags = model(**enc).logits.argmax(-1)
                for b, e in enumerate(chunk):
                    words = ["O"] * len(e.words)
                    for t in (labels[b] != -100).nonzero().flatten().tolist():
                        words[enc.word_ids(b)[t]] = tags[int(best_tags[b, t])]
                    predicted.append(words)
        f1 = entity_report([list(e.tags) for e in dev], predicted)["f1"]
        log(f"tasks: plain epoch {epoch + 1}: dev F1 {f1:.4f}")
        best = max(best, f1)
    return best, time.process_time() - start_cpu, time.perf_counter() - start


def plain_sequence_classification(train, dev, labels, batch_size: int, epochs: int, encoder_lr: float,
                                  head_lr: float, seed: int) -> tuple[float, float]:
    """Dev accuracy and CPU seconds (training and testing) of a plain transformers run."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from mmassist.core.hf import quiet_transformers
    from mmassist.plugins.text import default_model_path

    torch.manual_seed(seed)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = time.process_time()
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    new = [p for n, p in model.named_parameters() if not n.startswith(model.base_model_prefix)]
    old = [p for n, p in model.named_parameters() if n.startswith(model.base_model_prefix)]
    optimizer = torch.optim.AdamW([{"params": old, "lr": encoder_lr}, {"params": new, "lr": head_lr}],
                                  weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)

    def encode(examples):
        return tokenizer([e.text for e in examples], truncation=True, max_length=66, padding=True, return_tensors="pt")

    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for s in range(0, len(order), batch_size):
            chunk = [train[i] for i in order[s: s + batch_size]]
            target = torch.tensor([labels.index(e.label) for e in chunk])
            _update(model, model(**encode(chunk), labels=target).loss, optimizer, scheduler)
    model.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(dev), 64):
            chunk = dev[s: s + 64]
            predicted = model(**encode(chunk)).logits.argmax(-1).tolist()
            right += sum(labels[p] == e.label for p, e in zip(predicted, chunk))
    return right / len(dev), time.process_time() - start


def _update(model, loss, optimizer, scheduler) -> None:
    """One optimizer step of a plain loop: backward, clipping at 1.0 (as ours), step, schedule."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
