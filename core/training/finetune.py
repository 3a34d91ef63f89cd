"""``core.finetune(cfg)``: fine-tune a fused model on a task, from one CPU to many GPUs.

    res = core.finetune("examples/configs/sst2_sentiment.yaml")
    res.metrics["test"]                     # the test report
    core.Assistant.from_pretrained(res.output_dir)

Across processes, run the same through torchrun (or ``accelerate launch``)::

    torchrun --nproc_per_node=2 -m core.finetune examples/configs/sst2_sentiment.yaml

Each step takes one global batch of ``training.batch_size x processes`` examples, split between the
processes, so a run gives the same result whatever the number of processes (up to float error).

The run folder holds the final model (loadable by ``Assistant.from_pretrained``), ``best/``,
``checkpoints/step-N/`` (resumable: model + optimizer, scheduler, RNG and data position) and
``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from mmassist.core.runtime.assistant import Assistant, autocast, resolve_dtype
from mmassist.core.training.callbacks import ProgressPrinter, TrainerCallback, TrainerControl, TrainerState
from mmassist.core.runtime.checkpoint import (load_initial_weights, load_weights, read_checkpoint, recover_checkpoint,
                             save_checkpoint, trained_state)
from mmassist.core.runtime.config import FusionConfig, in_part
from mmassist.core.data import Example, load_examples, load_splits
from mmassist.core.errors import ConfigError, DataFormatError, MMAssistError
from mmassist.core.runtime.feature_cache import FeatureCache
from mmassist.core.contract.host import Host
from mmassist.core.contract.media import Media, text_media
from mmassist.core.training.metrics import classification_report, entity_report, text_report
from mmassist.core.runtime.model import HEAD_TASKS, MultimodalModel, build_tokenizer_for, unwrap_peft
from mmassist.core.runtime.processor import Encoded, Processor
from mmassist.core.runtime.tags import sort_tags, word_tags
from mmassist.core.training.train_state import load_train_state, optimizer_state, save_train_state

LOWER_IS_BETTER = {"loss"}
AUTO_METRIC = {"classification": "accuracy", "token_classification": "f1"}  # training.metric: auto


def validation_metric(cfg: FusionConfig) -> str:
    """The metric that picks the best checkpoint and stops early: ``training.metric``, or the task's own."""
    return cfg.training.metric if cfg.training.metric != "auto" else AUTO_METRIC.get(cfg.task.kind, "loss")


@dataclass
class FinetuneResult:
    """What a fine-tune produced: the model folder, the final metrics and the whole log."""

    output_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


# -- distributed ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group that torchrun / accelerate set up through the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- data -----------------------------------------------------------------------------------


def encode_example(ex: Example, processor: Processor, cfg: FusionConfig, *, for_training: bool) -> Encoded:
    """A dataset example -> token ids (labels on the answer) and media, with the file:line on errors."""
    try:
        if cfg.task.kind == "token_classification":
            tags = [cfg.task.labels.index(t) for t in ex.tags] if for_training else None
            return processor.encode_words(cfg.task.prompt, ex.words, tags)
        if cfg.task.kind == "classification":
            conv = processor.classification_conversation(cfg.task.prompt, **_classified_input(ex, cfg))
            return processor.encode(conv, add_generation_prompt=True, class_label=cfg.task.labels.index(ex.label))
        media: dict[str, list[Any]] = {}
        for modality, path in ex.media:
            media.setdefault(modality, []).append(Media.of(path))
        messages = list(ex.messages)
        if not for_training:  # the prompt only: everything before the last answer
            messages = messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
        conv = processor.conversation(messages, media)
        return processor.encode(conv, add_generation_prompt=not for_training, with_labels=for_training)
    except MMAssistError as e:
        if isinstance(e, DataFormatError):
            raise
        path, _, line = ex.source.rpartition(":")
        raise DataFormatError(str(e), path=path or ex.source, line=int(line) if line.isdigit() else None) from None


def _classified_input(ex: Example, cfg: FusionConfig) -> dict[str, Any]:
    """A classification example's input for :meth:`Processor.classification_conversation`: its text inline
    when there is no text encoder, else ``(modality, input)``."""
    if ex.text is not None and "text" not in cfg.encoders:
        return {"text": ex.text}
    return {"item": ("text", text_media(ex.text)) if ex.text is not None else ex.media[0]}


def reference_answer(ex: Example) -> str:
    return next(m["content"] for m in reversed(ex.messages) if m["role"] == "assistant")


SAMPLES = 5  # predictions kept in an evaluation's report, beside the scores


def example_input(ex: Example) -> str:
    """What an example gives the model, in one line: its text (or last question) and its media files' names."""
    if ex.words:
        text = " ".join(ex.words)
    elif ex.text is not None:
        text = ex.text
    else:
        text = next((m["content"] for m in reversed(ex.messages) if m["role"] == "user"), "")
        text = text if isinstance(text, str) else ""
    files = " ".join(f"[{Path(path).name}]" for _, path in ex.media)
    return " ".join(part for part in (files, " ".join(text.split())) if part)


def samples(examples: Sequence[Example], references: Sequence[str], predictions: Sequence[str]) -> list[dict]:
    """The first :data:`SAMPLES` predictions beside their inputs and references (``samples`` in a report)."""
    return [{"input": example_input(e), "reference": r, "prediction": p}
            for e, r, p in zip(examples[:SAMPLES], references, predictions)]


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                  world: int = 1) -> list[list[int]]:
    """The global batches of one epoch: shuffled with (seed, epoch), so a resumed run sees the same.

    With ``group_by_length``, examples of similar length share a batch (sorted within chunks of 50
    batches, then the batches shuffled) to waste little padding.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if group_by_length:
        chunk = batch_size * 50
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s: s + chunk], key=lambda i: -lengths[i])]
    batches = [order[s: s + batch_size] for s in range(0, len(order), batch_size)]
    if world > 1 and batches and len(batches[-1]) < world:
        batches.pop()  # every process needs at least one example
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


# -- optimisation ---------------------------------------------------------------------------


def apply_freezing(model: MultimodalModel, cfg: FusionConfig) -> None:
    """requires_grad=False on frozen encoders (but for their ``trainable`` parts), a frozen decoder and the
    parts named in training.freeze."""
    for m, enc in cfg.encoders.items():
        if enc.freeze:
            named = list(model.encoders[m].named_parameters())
            for prefix in enc.trainable:
                if not any(in_part(n, prefix) for n, _ in named):
                    parts = sorted({".".join(n.split(".")[:-1]) for n, _ in named})
                    raise ConfigError(f"encoders.{m}.trainable: {prefix!r} names no parameter of {enc.name}; "
                                      f"its parts include {', '.join(parts[-4:])}")
            for n, p in named:
                p.requires_grad = "lora_" in n or enc.trains(n)
    if cfg.decoder.freeze:
        for n, p in model.decoder.named_parameters():
            p.requires_grad = "lora_" in n
    if model.head is not None:  # classification never uses the LM head (unless tied to the embeddings)
        lm_head = unwrap_peft(model.decoder).get_output_embeddings()
        if lm_head is not None and lm_head.weight is not model.decoder.get_input_embeddings().weight:
            lm_head.requires_grad_(False)
    names = [n for n, _ in model.named_parameters()]
    for prefix in cfg.training.freeze:
        hits = [n for n in names if in_part(n, prefix)]
        if not hits:
            parts = sorted({".".join(n.split(".")[:3]) for n in names if n.startswith(("fusion", "head"))})
            raise ConfigError(f"training.freeze: {prefix!r} names no part of the model; parts include "
                              f"{', '.join(parts)}")
        for n, p in model.named_parameters():
            if n in hits:
                p.requires_grad = False


def param_groups(model: MultimodalModel, cfg: FusionConfig) -> list[dict[str, Any]]:
    """AdamW groups: a learning rate per component, and no weight decay on norms and biases (1-D)."""
    t = cfg.training
    lrs = {f"encoders.{m}.": e.lr or t.lr for m, e in cfg.encoders.items()}
    lrs.update({"decoder.": cfg.decoder.lr or t.lr, "fusion.": t.lr_fusion or t.lr, "head.": t.lr_head or t.lr})
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = next((v for k, v in lrs.items() if name.startswith(k)), t.lr)
        groups.setdefault((lr, p.ndim >= 2), []).append(p)
    if not groups:
        raise ConfigError("nothing to train: every part of the model is frozen")
    return [{"params": ps, "lr": lr, "weight_decay": t.weight_decay if decay else 0.0}
            for (lr, decay), ps in groups.items()]


def lr_lambda(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress

    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -- the run --------------------------------------------------------------------------------


class _Run:
    """One fine-tune: everything ``finetune`` sets up, and the loop over it."""

    def __init__(self, cfg: FusionConfig, output_dir: Path, callbacks: Sequence[TrainerCallback],
                 resume_from: Path | None, host: Host, init_from: Path | None = None,
                 splits: dict[str, list[Example]] | None = None):
        self.cfg, self.out, self.callbacks, self.host = cfg, output_dir, list(callbacks), host
        self.dist = init_distributed()
        t = cfg.training
        seed_everything(t.seed)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(t.precision, self.device)
        self.tokenizer = build_tokenizer_for(cfg, host)
        self.model = MultimodalModel(cfg, host, self.tokenizer)
        self.init_from, self.init_missing = init_from, None
        if resume_from is not None:
            load_weights(self.model, resume_from)
        elif init_from is not None:
            self.init_missing = load_initial_weights(self.model, init_from, self.tokenizer)
        apply_freezing(self.model, cfg)
        if t.feature_cache:
            # (A token classifier's text encoder reads words, not the cached items.)
            cached = [m for m, e in cfg.encoders.items() if e.freeze and not e.trainable and m not in t.lora.encoders
                      and not (m == "text" and cfg.task.kind == "token_classification")]
            self.model.feature_cache = FeatureCache(cached) if cached else None
        if t.gradient_checkpointing:
            decoder = self.model.decoder  # transformers 5.x renamed it; older releases have the old name
            enable = getattr(decoder, "activation_checkpointing_enable", None) or decoder.gradient_checkpointing_enable
            enable()
        self.model.to(self.device)
        if t.compile:
            self.model.decoder.compile()
        self.processor = Processor(self.tokenizer, self.model.encoders, cfg.decoder.max_length, cfg.task.system_prompt,
                                   cfg.task.encode_user_text)
        self.splits = splits or load_splits(cfg.data, cfg.task, host)
        if not self.splits["train"]:
            raise DataFormatError("no training examples", path=cfg.data.train)
        self.train = [encode_example(e, self.processor, cfg, for_training=True) for e in self.splits["train"]]
        self.wrapped = self._wrap(self.model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), betas=tuple(t.betas),
                                           fused=self.device.type == "cuda")
        lengths = [len(e.input_ids) for e in self.train]
        self.global_batch = t.batch_size * self.dist.world
        self.batches_per_epoch = len(epoch_batches(lengths, self.global_batch, t.seed, 0, False, self.dist.world))
        self.lengths = lengths
        steps_per_epoch = max(1, math.ceil(self.batches_per_epoch / t.grad_accum))
        self.max_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
        self.eval_every = t.eval_every or steps_per_epoch
        self.save_every = t.save_every or self.eval_every
        warmup = int(t.warmup_ratio * self.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(t.scheduler, warmup, self.max_steps))
        self.metric = validation_metric(cfg)
        self.state = TrainerState(max_steps=self.max_steps, metric_name=self.metric, is_main_process=self.dist.main)
        self.control = TrainerControl()
        self.position = {"epoch": 0, "batch": 0}
        self.bad_evals = 0
        self.best_metrics: dict[str, Any] | None = None  # the kept model's evaluation, from this run
        if resume_from is not None:
            loop = load_train_state(resume_from, self.model, self.optimizer, self.scheduler)
            self.position = {"epoch": loop["epoch"], "batch": loop["batch"]}
            self.state.step = loop["step"]
            self.state.best_metric, self.state.best_step = loop["best_metric"], loop["best_step"]
            self.state.history = loop["history"]
            self.bad_evals = loop["bad_evals"]
        self._evaluator: Assistant | None = None

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.dist.world == 1:
            return model
        if self.cfg.training.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # The decoder's layers are sharded one by one; everything else (embeddings, LM head,
            # encoders, fusion, head) forms the root unit, gathered for the whole forward pass,
            # since the model embeds and splices before it calls the decoder.
            for layer in _decoder_layers(model.decoder):
                fully_shard(layer)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=len(self.cfg.encoders) > 1)

    # -- logging ------------------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        record = {"step": self.state.step, "epoch": round(self.state.epoch, 4), **record,
                  "time": round(time.time() - self.state.started, 2)}
        self.state.history.append(record)
        if self.dist.main:
            with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.state, self.control, *args)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> FinetuneResult:
        t = self.cfg.training
        self.out.mkdir(parents=True, exist_ok=True)
        if self.init_missing is not None:
            self.log({"split": "train", "event": "init_from", "path": str(self.init_from),
                      "new_tensors": self.init_missing})
        self.emit("on_train_begin")
        self.model.train()
        accum, loss_sum, loss_n = 0, 0.0, 0
        epoch, start_batch = self.position["epoch"], self.position["batch"]
        while self.state.step < self.max_steps and not self.control.should_stop:
            batches = epoch_batches(self.lengths, self.global_batch, t.seed, epoch, t.group_by_length, self.dist.world)
            for bi in range(start_batch, len(batches)):
                shard = batches[bi][self.dist.rank:: self.dist.world]
                batch = self.processor.collate([self.train[i] for i in shard], cache=self.model.feature_cache)
                sync = accum + 1 == t.grad_accum
                ctx = self.wrapped.no_sync() if (not sync and hasattr(self.wrapped, "no_sync")) else _null()
                with ctx, autocast(self.device, self.dtype):
                    loss = self.wrapped(batch.to(self.device)).loss
                    (loss / t.grad_accum).backward()
                loss_sum, loss_n, accum = loss_sum + float(loss.detach()), loss_n + 1, accum + 1
                if not sync:
                    continue
                accum = 0
                if t.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], t.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                self.state.epoch = epoch + (bi + 1) / len(batches)
                self.state.loss = _mean_across(loss_sum / loss_n, self.dist)
                self.state.lr = self.scheduler.get_last_lr()[0]
                loss_sum, loss_n = 0.0, 0
                if self.state.step % t.log_every == 0 or self.state.step == self.max_steps:
                    self.log({"split": "train", "loss": self.state.loss, "lr": self.state.lr})
                self.emit("on_step_end")
                position = {"epoch": epoch, "batch": bi + 1}
                if self.state.step % self.eval_every == 0 or self.state.step == self.max_steps:
                    self.evaluate_and_track()
                if self.state.step % self.save_every == 0 or self.state.step == self.max_steps:
                    self.save_resumable(position)
                if self.state.step >= self.max_steps or self.control.should_stop:
                    break
            epoch, start_batch = epoch + 1, 0
        return self.finish()

    def evaluate_and_track(self) -> None:
        if not self.splits["validation"]:
            return
        metrics = self.evaluate("validation")
        value = metrics[self.metric]
        better = self.state.best_metric is None or (
            value < self.state.best_metric if self.metric in LOWER_IS_BETTER else value > self.state.best_metric)
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.best_metrics = metrics  # the final report reuses them: the model kept
            self.bad_evals = 0
            self.save_model(self.out / "best")
        else:
            self.bad_evals += 1
            if self.cfg.training.patience is not None and self.bad_evals >= self.cfg.training.patience:
                self.control.should_stop = True
                self.log({"split": "train", "event": "early_stop", "best_step": self.state.best_step})
        self.emit("on_evaluate", metrics)
        self.model.train()

    def evaluate(self, split: str, generate_limit: int | None = None) -> dict[str, Any]:
        """Loss and task metrics on a split, computed the same way on every process."""
        if self._evaluator is None:
            self._evaluator = Assistant(self.model, self.tokenizer, self.cfg, self.host, device=self.device,
                                        dtype=self.dtype)
        limit = self.cfg.training.eval_generate if generate_limit is None else generate_limit
        sharded = hasattr(self.model, "unshard")  # FSDP: generation calls parts outside forward()
        if sharded:
            self.model.unshard()
        self.state.phase = "validating" if split == "validation" else "testing"
        metrics = evaluate_examples(self._evaluator, self.splits[split], self.cfg.training.batch_size, limit,
                                    progress=lambda done, total: self.emit("on_phase", done, total))
        self.state.phase = "training"
        if sharded:
            self.model.reshard()
        self.log({"split": split, **metrics})
        return metrics

    def save_model(self, path: Path) -> None:
        state = trained_state(self.model)  # every process: gathering shards is a collective
        if self.dist.main:
            save_checkpoint(self.model, self.tokenizer, self.cfg, path, self.host, state=state)
            self.emit("on_save", str(path))
        _barrier(self.dist)

    def save_resumable(self, position: dict[str, int]) -> None:
        """checkpoints/step-N: the model and everything needed to continue exactly from here."""
        folder = self.out / "checkpoints" / f"step-{self.state.step:06d}"
        loop = {**position, "step": self.state.step, "best_metric": self.state.best_metric,
                "best_step": self.state.best_step, "history": self.state.history, "bad_evals": self.bad_evals}
        state = trained_state(self.model)  # every process: gathering shards is a collective
        optim = optimizer_state(self.model, self.optimizer)
        if self.dist.main:
            save_checkpoint(self.model, self.tokenizer, self.cfg, folder, self.host, state=state,
                            write_more=lambda tmp: save_train_state(tmp, optim, self.scheduler, loop))
            old = sorted((self.out / "checkpoints").glob("step-*"))[: -self.cfg.training.keep_checkpoints]
            for stale in old:
                shutil.rmtree(stale, ignore_errors=True)
            self.emit("on_save", str(folder))
        _barrier(self.dist)

    def finish(self) -> FinetuneResult:
        best = self.out / "best"
        recover_checkpoint(best)  # a kill while "best" was being replaced, before this run was resumed
        if best.is_dir() and self.state.best_step != self.state.step:
            load_best(self.model, best, sharded=self.dist.world > 1 and self.cfg.training.strategy == "fsdp")
        metrics: dict[str, Any] = {"train_loss": self.state.loss, "steps": self.state.step,
                                   "best_step": self.state.best_step, self.metric + "_best": self.state.best_metric}
        if self.splits["validation"]:
            # The kept model was evaluated when it was found best (unless this run was resumed since):
            # evaluating it again would repeat the same numbers at the cost of a whole validation pass.
            metrics["validation"] = self.best_metrics or self.evaluate("validation")
        if self.splits["test"]:
            metrics["test"] = self.evaluate("test", generate_limit=len(self.splits["test"]))
        self.state.phase = "saving"
        self.emit("on_phase", 0, 1)
        state = trained_state(self.model)
        if self.dist.main:
            publish_model(self.model, self.tokenizer, self.cfg, self.out, self.host, state)
            (self.out / "final_metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        _barrier(self.dist)
        self.emit("on_train_end")
        return FinetuneResult(self.out, metrics, self.state.history)


@torch.no_grad()
def evaluate_examples(asst: Assistant, examples: Sequence[Example], batch_size: int = 16,
                      generate_limit: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Loss, and accuracy with per-class precision / recall / F1 (classification), entity-level scores
    (token classification) or exact match, BLEU and CIDEr-D of greedy answers (other tasks; on the first
    ``generate_limit`` examples). ``progress(done, total)`` is called after each batch."""
    cfg, model, processor = asst.cfg, asst.model.eval(), asst.processor
    total, weight = 0.0, 0
    preds: list[Any] = []
    encoded = [encode_example(e, processor, cfg, for_training=True) for e in examples]
    generated = 0 if cfg.task.kind in HEAD_TASKS else \
        len(examples) if generate_limit is None else min(generate_limit, len(examples))
    batches = -(-len(encoded) // batch_size) + -(-generated // batch_size)
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, batches)

    for s in range(0, len(encoded), batch_size):
        batch = processor.collate(encoded[s: s + batch_size], cache=model.feature_cache).to(asst.device)
        with autocast(asst.device, asst.dtype):
            out = model(batch)
        if cfg.task.kind == "classification":
            n = len(batch.input_ids)
            preds += [cfg.task.labels[i] for i in out.logits.argmax(-1).tolist()]
        elif cfg.task.kind == "token_classification":
            n = int((batch.token_labels != -100).sum())
            preds += word_tags(out.logits, batch.word_index, [len(e.words) for e in encoded[s: s + batch_size]],
                               cfg.task.labels)
        else:
            n = int((batch.labels[:, 1:] != -100).sum())
        total, weight = total + float(out.loss) * n, weight + n
        advance()
    metrics: dict[str, Any] = {"loss": total / max(weight, 1)}
    if cfg.task.kind == "token_classification":
        metrics.update(entity_report([list(e.tags) for e in examples], preds))
        metrics["samples"] = samples(examples, [" ".join(e.tags) for e in examples], [" ".join(p) for p in preds])
        return metrics
    if cfg.task.kind == "classification":
        metrics.update(classification_report([e.label for e in examples], preds, cfg.task.labels))
        metrics["samples"] = samples(examples, [e.label for e in examples], preds)
        return metrics
    chosen = list(examples[: len(examples) if generate_limit is None else generate_limit])
    if chosen:
        gen = dataclasses.replace(cfg.generation, temperature=0.0)
        prompts = [encode_example(e, processor, cfg, for_training=False) for e in chosen]
        answers = []
        for s in range(0, len(prompts), batch_size):
            answers += asst.generate_batch(prompts[s: s + batch_size], gen)
            advance()
        references = [reference_answer(e) for e in chosen]
        metrics.update(text_report(references, answers))
        metrics["samples"] = samples(chosen, references, answers)
    return metrics


def evaluate_checkpoint(path: str | Path, data: str | Path, *, host: Host | None = None,
                        batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The test report of a saved model on a data file (in any format its task reads);
    ``progress(done, total)`` after each batch."""
    asst = Assistant.from_pretrained(path, host=host)
    examples = load_examples(data, asst.cfg.task, asst.cfg.data, asst.host)
    return evaluate_examples(asst, examples, batch_size, progress=progress)


def load_best(model: nn.Module, folder: Path, sharded: bool) -> None:
    """Load a saved model's weights back into the training model (sharded under FSDP)."""
    if not sharded:
        load_weights(model, folder)
        return
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, load_file(str(folder / "model.safetensors")),
                         options=StateDictOptions(full_state_dict=True, strict=False))


def publish_model(model, tokenizer, cfg, out: Path, host: Host, state: dict[str, torch.Tensor]) -> None:
    """Write the final model's files into the run folder itself, each file replaced atomically."""
    staged = save_checkpoint(model, tokenizer, cfg, out / ".final", host, state=state)
    files = sorted(staged.iterdir(), key=lambda p: p.name == "manifest.json")  # the manifest last
    for f in files:
        os.replace(f, out / f.name)
    shutil.rmtree(staged, ignore_errors=True)


def _decoder_layers(decoder: nn.Module) -> list[nn.Module]:
    layers = [m for m in decoder.modules() if isinstance(m, nn.ModuleList)]
    return list(max(layers, key=len)) if layers else []


def _mean_across(value: float, d: Dist) -> float:
    if d.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]) / d.world


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# What a resumed run may change: nothing it has learned or will learn depends on them (the test file is
# read after training; generation settings shape the answers of evaluations only).
RESUMABLE_CHANGES = ("data.test", "generation.")


def resume_conflicts(saved: FusionConfig, cfg: FusionConfig) -> list[str]:
    """The fields of ``cfg`` that keep a run written with ``saved`` from resuming under it."""
    return [k for k in saved.differences(cfg) if not k.startswith(RESUMABLE_CHANGES)]


def finetune(cfg: FusionConfig | dict | str | Path, *, output_dir: str | Path | None = None,
             callbacks: Iterable[TrainerCallback] = (), resume_from: str | Path | None = None,
             init_from: str | Path | None = None, host: Host | None = None, progress: bool = True,
             **overrides: Any) -> FinetuneResult:
    """Fine-tune the model a config describes on its data, evaluate it and save it.

    :param cfg: a FusionConfig, a dict or the path of a YAML/JSON config.
    :param output_dir: the run folder (default: ``runs/<task>-<time>``).
    :param callbacks: :class:`mmassist.core.training.callbacks.TrainerCallback` objects to watch or stop the run.
    :param resume_from: a ``checkpoints/step-N`` folder of an earlier run to continue from.
    :param init_from: a trained model to start from (``"starter"``, a run folder, its ``best/``): its
        weights replace the fresh ones where they fit (see :func:`mmassist.core.runtime.checkpoint.load_initial_weights`);
        optimizer, schedule and step start anew. Ignored with ``resume_from``, whose weights already
        came from it.
    :param progress: show a progress bar (steps, then each evaluation's batches) and a line of metrics per
        evaluation on standard error (:class:`~mmassist.core.training.callbacks.ProgressPrinter`), unless
        ``callbacks`` already has one.
    :param overrides: config fields to replace, by dotted name: ``**{"training.lr": 1e-3}``.
    :return: :class:`FinetuneResult` with the run folder (a loadable model), metrics and history.
    """
    callbacks = list(callbacks)
    if progress and not any(isinstance(cb, ProgressPrinter) for cb in callbacks):
        callbacks.append(ProgressPrinter())
    cfg = FusionConfig.coerce(cfg)
    if overrides:
        cfg = cfg.override(**overrides)
    host = host or Host()
    splits = None
    if cfg.task.kind == "token_classification" and not cfg.task.labels:  # the tags the data uses
        splits = load_splits(cfg.data, cfg.task, host)
        tags = sort_tags({t for part in splits.values() for e in part for t in e.tags})
        if len(tags) < 2:
            raise DataFormatError(f"every word of the data is tagged {tags[0]}: there is nothing to learn to tag",
                                  path=str(cfg.data.train))
        cfg = cfg.override(**{"task.labels": tags})
    if resume_from is not None:
        resume_from = Path(resume_from)
        saved, _ = read_checkpoint(resume_from, host)
        changed = resume_conflicts(saved, cfg)
        if changed:
            raise ConfigError(f"{resume_from} was written with a different config ({', '.join(changed)} changed); "
                              f"resume with the same one (only the test file and the generation settings may "
                              f"change), or start a new run from its weights with init_from")
        if not (resume_from / "trainer_state.json").is_file():
            raise ConfigError(f"{resume_from} holds a model but no trainer state; resume from checkpoints/step-N")
    out = Path(output_dir) if output_dir is not None else \
        Path("runs") / f"{cfg.task.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = _Run(cfg, out, callbacks, resume_from, host,
               init_from=host.model_folder(init_from) if init_from is not None else None, splits=splits)
    try:
        return run.run()
    except BaseException as e:
        run.emit("on_exception", e)
        raise
