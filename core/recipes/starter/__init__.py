"""The starter assistant: a small model trained here, offline, on the bundled data, and shipped with
the package, so that a fresh machine has an assistant that really works.

- images and videos: a small timm ResNet (``test_resnet``, 0.4 M parameters) trained from scratch,
  one for pictures and one for video frames, both starting from a backbone pretrained here on the
  training split's shape and digit labels, the video one then on the training clips' direction, shape
  and colour (stage one, :mod:`mmassist.core.recipes.starter.backbone`);
- text: the pretrained all-MiniLM-L6-v2, which reads every user turn (``task.encode_user_text``) beside
  the decoder; stage one tunes its top three layers on the training sentiment turns, the chat run
  reads it frozen, and the starter ships those layers (float16) and references the rest;
- a 3-layer Llama-style decoder (hidden size 192) with a byte-level BPE tokenizer trained on the training mix;
- the fusion module between them (MLP projectors, modality and temporal embeddings).

It is trained with :func:`mmassist.core.training.finetune` itself, as one multi-task chat run over the bundled mix
(captions, visual questions and follow-ups, digits, motion, sentiment, plain chat), then a shorter run
from it that drills "where is the ...?" and "is there a ...?" with the mix replayed beside them::

    from mmassist.core.recipes import starter
    starter.train(Path("runs/starter"))        # or: mmassist train-starter
    starter.evaluate("starter")                # or: mmassist eval starter

``Assistant.from_pretrained("starter")`` loads the copy the user installed (``train(..., install=True)``,
under the user cache), else the one shipped with the package (:mod:`.paths`).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from mmassist.core.contract.host import Host
from mmassist.core.data import load_examples
from mmassist.core.errors import ConfigError
from mmassist.core.recipes import bundled
from mmassist.core.recipes.bundled.common import llava_record, plain_question, read_jsonl, replace_jsonl
from mmassist.core.recipes.bundled.shapes import question_template
from mmassist.core.recipes.starter import backbone
from mmassist.core.recipes.starter.paths import (  # noqa: F401 (install_root, is_installed, model_path: re-exported)
    NAME, SHIPPED_ROOT, examples_dir, install_root, is_installed, model_path, user_root)
from mmassist.core.runtime.assistant import Assistant
from mmassist.core.runtime.checkpoint import manifest, save_checkpoint, trained_state, without_initial_weights
from mmassist.core.runtime.config import DataConfig, FusionConfig, TaskConfig, in_part
from mmassist.core.runtime.model import MultimodalModel, placeholder_token
from mmassist.core.runtime.tokenizer import build_tokenizer
from mmassist.core.training.finetune import FinetuneResult, encode_example, finetune

RECIPE = SHIPPED_ROOT / "recipe.yaml"
TOKENIZER_VOCAB = 2048
# Stage one: steps of supervised pretraining of the image backbone (about 2 minutes on 2 CPU cores).
BACKBONE_STEPS = 1500
# ... and of the video backbone, from the image backbone's weights (under 3 minutes).
VIDEO_BACKBONE_STEPS = 400
# ... and the top layers of the text encoder tuned on the training sentiment turns (see backbone.py).
TEXT_LAYERS = 3
# Stage three: after the chat run, a shorter run from it on the binding turns of the training shape pictures
# ("where is the (colour) shape?", "is there a <colour> <shape>?", each alone with its picture) mixed with as
# many records of the whole training mix, so nothing else is unlearnt. In the multi-task run these turns stayed
# near chance even on training pictures (which of two shapes is the asked one): the answers named another
# shape's cell. Trained on "where" turns alone, the same model got them right (0.45 -> 0.88 on validation in
# 1,600 steps) but forgot everything else, hence the mix.
BINDING_QUESTIONS = ("Where is the ", "Is there a ")
BINDING_FILE = "starter_binding_train.jsonl"
BINDING_SEED = 15
BINDING_OVERRIDES = {"training.max_steps": 3000, "training.lr": 5.0e-4, "training.warmup_ratio": 0.05,
                     "training.eval_every": 1000}

# Held-out figures are reported per task; a record's task is read from its id.
TASKS = {
    "shapes_caption": "shape captions (exact match)",
    "shapes_qa": "shape questions (accuracy)",
    "digits": "digits (accuracy)",
    "motion": "motion direction (accuracy)",
    "motion_other": "motion: other questions and captions (exact match)",
    "sentiment": "SST-2 sentiment through chat (accuracy)",
    "chat": "plain chat (exact match)",
    "follow_up": "a second question about the same shape scene or clip, one turn later (accuracy)",
}
TARGETS = {"shapes_caption": 0.90, "shapes_qa": 0.90, "digits": 0.95, "motion": 0.90, "sentiment": 0.82}


def recipe(data_root: str | Path | None = None, tokenizer_dir: str | Path | None = None,
           backbone: str | Path | None = None, video_backbone: str | Path | None = None,
           text_encoder: str | Path | None = None) -> FusionConfig:
    """The starter's training config (``recipe.yaml``), with the data under ``data_root`` (default:
    the bundled-data cache), the decoder's tokenizer from ``tokenizer_dir``, the image and video
    backbones starting from the stage-one weights ``backbone`` and ``video_backbone``
    (:mod:`mmassist.core.recipes.starter.backbone`; without ``video_backbone`` the video backbone starts from ``backbone``)
    and the text encoder read from ``text_encoder``, the stage-one folder of the tuned MiniLM."""
    cfg = FusionConfig.from_file(RECIPE)
    changes = {}
    if text_encoder is not None:
        changes["encoders.text.config.model_path"] = str(Path(text_encoder).resolve())
    if backbone is not None:
        weights = str(Path(backbone).resolve())
        video = str(Path(video_backbone).resolve()) if video_backbone is not None else weights
        changes.update({"encoders.image.config.checkpoint_path": weights,
                        "encoders.video.config.backbone.checkpoint_path": video})
    if data_root is not None:
        root = Path(data_root).resolve()
        changes.update({f"data.{s}": str(root / f"mix_{s}.jsonl") for s in ("train", "validation", "test")})
    if tokenizer_dir is not None:
        changes["decoder.tokenizer"] = str(Path(tokenizer_dir).resolve())
    return cfg.override(**changes) if changes else cfg


def corpus(mix_file: Path) -> Iterable[str]:
    """Every turn's text of a mix file, placeholders removed: what the tokenizer learns merges from."""
    with open(mix_file, encoding="utf-8") as f:
        for line in f:
            for turn in json.loads(line)["conversations"]:
                yield turn["value"].replace("<image>", "").replace("<video>", "").strip()


def train_tokenizer(mix_file: Path, out: Path, vocab_size: int = TOKENIZER_VOCAB) -> Path:
    """A byte-level BPE tokenizer trained on the training mix, saved to ``out``."""
    placeholders = [placeholder_token(m) for m in ("image", "video", "text")]
    tok = build_tokenizer(corpus(mix_file), vocab_size=vocab_size, placeholders=placeholders)
    tok.save_pretrained(str(out))
    return out


def train(out: str | Path, *, data_root: str | Path | None = None, install: bool | str | Path = False,
          callbacks=(), small: bool = False, **overrides) -> FinetuneResult:
    """Rebuild the starter from scratch: build the bundled data, train the tokenizer, pretrain the image
    and video backbones and tune the text encoder's top layers on the training labels (stage one,
    :mod:`mmassist.core.recipes.starter.backbone`), run :func:`mmassist.core.training.finetune` on the recipe (stage two, ``out/chat``), then
    from it on :func:`binding_mix` (stage three, :data:`BINDING_OVERRIDES`), and (``install``) install the
    result as the starter with its examples re-picked: ``install=True`` into the user cache
    (:func:`.paths.user_root`), which ``"starter"`` then loads; a path installs there instead (the repository's
    ``core/recipes/starter`` to replace the shipped one). A rerun into the same folder keeps finished stage ones
    and chat run.

    :param out: the run folder; the trained model is ``out/model``.
    :param small: train on the small builds of the bundled data (for tests).
    :param overrides: recipe fields to replace, by dotted name (``**{"training.epochs": 1}``), in every
        stage; in the binding run they also replace :data:`BINDING_OVERRIDES` (not its ``data.train``).
    :return: the :class:`mmassist.core.training.finetune.FinetuneResult`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = bundled.build_all(Path(data_root) if data_root is not None else bundled.default_root(), small=small)
    tok_dir = train_tokenizer(root / "mix_train.jsonl", out / "tokenizer")
    start = time.time()
    weights = out / "backbone" / backbone.WEIGHTS
    video_weights = weights.parent / backbone.VIDEO_WEIGHTS
    text_folder = weights.parent / backbone.TEXT_ENCODER
    cfg = recipe(root, tok_dir, weights, video_weights, text_folder)
    encoders = cfg.override(**overrides).encoders  # as the run will build them: an override applies to stage one too
    if not weights.is_file():  # a resumed run keeps its stage one
        backbone.pretrain_backbone(dict(encoders["image"].config), root, weights.parent,
                                   steps=2 if small else BACKBONE_STEPS)
    if not video_weights.is_file():
        video_config = copy.deepcopy(encoders["video"].config)
        video_config["backbone"]["checkpoint_path"] = str(weights.resolve())  # starts from the image stage one
        backbone.pretrain_video_backbone(video_config, root, weights.parent,
                                         steps=2 if small else VIDEO_BACKBONE_STEPS)
    if not (text_folder / "config.json").is_file():
        text_config = {k: v for k, v in encoders["text"].config.items() if k != "model_path"}  # the bundled MiniLM
        backbone.pretrain_text_encoder(text_config, root, weights.parent, layers=TEXT_LAYERS,
                                       max_steps=2 if small else None)
    stage_one = time.time() - start
    chat_dir = out / "chat"
    if not (chat_dir / "final_metrics.json").is_file():  # a rerun keeps a finished chat run
        finetune(cfg, output_dir=chat_dir, callbacks=callbacks, **overrides)
    chat_time = time.time() - start - stage_one
    binding = binding_mix(root)
    stage_three = {**BINDING_OVERRIDES, **overrides, "data.train": str(binding)}
    if small:
        stage_three["training.max_steps"] = 2
    result = finetune(cfg, output_dir=out / "model", callbacks=callbacks, init_from=chat_dir, **stage_three)
    (out / "train_time.json").write_text(json.dumps({"seconds": time.time() - start, "backbone_seconds": stage_one,
                                                     "chat_seconds": chat_time}),
                                         encoding="utf-8")
    if install:
        target = user_root() if install is True else Path(install)
        install_model(result.output_dir, target / "model")
        pick_examples(target / "model", target / "examples", data_root=root, small=small)
    return result


def binding_mix(root: str | Path, seed: int = BINDING_SEED) -> Path:
    """Stage three's training file, ``root/``:data:`BINDING_FILE`: every training shape turn that asks one of
    :data:`BINDING_QUESTIONS`, as a one-turn record with its picture, then as many records drawn from the
    training mix (every task, as they are), shuffled with ``seed``. Written beside the mix, whose media paths
    it shares."""
    root = Path(root)
    mix = read_jsonl(root / "mix_train.jsonl")
    turns = []
    for rec in mix:
        if "image" not in rec or not rec["id"].startswith("shapes-"):
            continue
        conv = rec["conversations"]
        for i in range(0, len(conv) - 1, 2):
            question = plain_question(conv[i]["value"])
            if question.startswith(BINDING_QUESTIONS):
                turns.append(llava_record(f"{rec['id']}-binding-{i // 2}", question, conv[i + 1]["value"],
                                          {"image": rec["image"]}))
    rng = random.Random(seed)
    records = turns + rng.sample(mix, min(len(turns), len(mix)))
    rng.shuffle(records)
    return replace_jsonl(root / BINDING_FILE, records)


MODEL_FILES = ("config.json", "model.safetensors", "manifest.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")


def install_model(run_dir: str | Path, target: str | Path | None = None) -> Path:
    """Copy a trained model's files (not its checkpoints or logs) into ``target``. The config no longer
    names the stage-one weights: the trained backbones are in ``model.safetensors``, and so are the text
    encoder's tuned layers (in float16), the rest of it referenced as the bundled all-MiniLM-L6-v2."""
    run_dir = Path(run_dir)
    target = Path(target) if target is not None else user_root() / "model"
    tmp = _fresh_folder(target)
    text_folder = _tuned_text_encoder(run_dir)
    if text_folder is not None:
        _fold_text_stage_one(run_dir, text_folder, tmp)
    else:
        for name in MODEL_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)
    manifest = json.loads((tmp / "manifest.json").read_text(encoding="utf-8"))
    cfg = without_initial_weights(FusionConfig.from_file(tmp / "config.json"), manifest, Host(load_entrypoints=False))
    (tmp / "config.json").write_text(cfg.to_json(), encoding="utf-8")  # no path of the machine that trained it
    return _replace_folder(tmp, target)


def _tuned_text_encoder(run_dir: Path) -> Path | None:
    """The stage-one folder a run's text encoder was read from, if it was one (:data:`backbone.TEXT_REPORT`
    beside it)."""
    text = FusionConfig.from_file(run_dir / "config.json").encoders.get("text")
    folder = text.config.get("model_path") if text is not None else None
    if folder and (Path(folder).parent / backbone.TEXT_REPORT).is_file():
        return Path(folder)
    return None


def _fold_text_stage_one(run_dir: Path, folder: Path, out: Path) -> None:
    """Write the model of ``run_dir``, whose text encoder is the stage-one folder ``folder``, into ``out``
    as a model whose text encoder is the bundled MiniLM with the tuned layers ``trainable`` (so saved in
    ``model.safetensors``, as float16) and frozen: the same weights, without the 90 MB folder."""
    import dataclasses

    import torch


    tuned = json.loads((folder.parent / backbone.TEXT_REPORT).read_text(encoding="utf-8"))["tuned"]
    run = Assistant.from_pretrained(run_dir, device="cpu", dtype=torch.float32)
    text = run.cfg.encoders["text"]
    config = {k: v for k, v in text.config.items() if k != "model_path"}
    cfg = dataclasses.replace(run.cfg, encoders={
        **run.cfg.encoders, "text": dataclasses.replace(text, config=config, freeze=True, trainable=tuned)})
    model = MultimodalModel(cfg, run.host, run.tokenizer)
    theirs = run.model.state_dict()
    kept = [f"encoders.text.{t}" for t in tuned]

    def is_tuned(name: str) -> bool:
        return any(in_part(name, k) for k in kept)

    for name, value in model.state_dict().items():  # the untuned text layers must be the bundled MiniLM's
        if name.startswith("encoders.text.") and not is_tuned(name):
            if not torch.equal(value, theirs[name]):
                raise ConfigError(f"{folder}: {name} differs from the bundled MiniLM's; only {', '.join(tuned)} "
                                  "may be tuned in stage one")
    model.load_state_dict(theirs)
    state = trained_state(model)
    for name in state:
        if is_tuned(name):
            half = state[name].half()
            if not torch.equal(half.float(), state[name]):
                raise ConfigError(f"{folder}: {name} is not float16-exact (stage one rounds what it tunes)")
            state[name] = half
    ours = manifest(model, cfg, run.host)  # what save_checkpoint writes anew; the run's extra entries are kept
    extra = {k: v for k, v in json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).items()
             if k not in ours}
    save_checkpoint(model, run.tokenizer, cfg, out, run.host, extra=extra, state=state)


def _fresh_folder(target: Path) -> Path:
    """An empty ``<target>.new`` beside ``target``, to fill and then swap in with :func:`_replace_folder`."""
    tmp = target.with_name(target.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _replace_folder(tmp: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


# Held-out examples the web app offers and the tests check, per task (tasks the model never gets right
# are left out rather than shown wrong).
EXAMPLES_PER_TASK = {"shapes_caption": 1, "shapes_qa": 3, "digits": 2, "motion": 1, "motion_other": 1,
                     "sentiment": 2, "chat": 1}


def pick_examples(model: str | Path = NAME, target: str | Path | None = None, *, data_root: str | Path | None = None,
                  per_task: dict[str, int] | None = None, tries: int = 60, small: bool = False) -> list[dict]:
    """Write ``target/examples.json`` (and copies of their media): the first held-out test records of each
    task that ``model`` answers correctly through :meth:`mmassist.core.Assistant.chat`, up to ``per_task[task]``
    each, trying at most ``tries`` records per task. Run after installing a newly trained starter.

    :return: the examples written (``id``, ``task``, ``question``, ``answer``, ``file``).
    """
    target = Path(target) if target is not None else examples_dir()
    want = dict(EXAMPLES_PER_TASK if per_task is None else per_task)
    assistant = Assistant.from_pretrained(model)
    root = bundled.build_all(Path(data_root) if data_root is not None else bundled.default_root(), small=small)
    picked, tried = [], {}
    with open(root / "mix_test.jsonl", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            question, reference = (turn["value"] for turn in rec["conversations"][:2])
            plain = plain_question(question)
            task = task_of(rec["id"], plain)
            if want.get(task, 0) <= 0 or tried.get(task, 0) >= tries:
                continue
            tried[task] = tried.get(task, 0) + 1
            file = rec.get("image") or rec.get("video")
            media = {"images": [str(root / file)]} if "image" in rec else \
                {"videos": [str(root / file)]} if "video" in rec else {}
            if assistant.chat(plain, **media).strip() == reference.strip():
                want[task] -= 1
                picked.append({"id": rec["id"], "task": task, "question": plain, "answer": reference, "file": file})
    tmp = _fresh_folder(target)
    for example in picked:
        if example["file"]:
            name = example["id"] + Path(example["file"]).suffix
            shutil.copy2(root / example["file"], tmp / name)
            example["file"] = name
    (tmp / "examples.json").write_text(json.dumps(picked, indent=1) + "\n", encoding="utf-8")
    _replace_folder(tmp, target)
    return picked


# -- evaluation -----------------------------------------------------------------------------------


def task_of(record_id: str, question: str) -> str:
    """The reporting task of a mix record, from its id (``shapes-caption-test-00001``...)."""
    source = record_id.split("-", 1)[0]
    if "-followup-" in record_id:
        return "follow_up"
    if "-caption-" in record_id:
        return "motion_other" if source == "motion" else f"{source}_caption" if source == "shapes" else source
    if source == "shapes":
        return "shapes_qa"
    if source == "motion":
        return "motion" if question.startswith(("Where does", "Which way", "In which direction")) else "motion_other"
    return source


@dataclass
class TaskScore:
    task: str
    correct: int
    total: int
    # Shape questions per kind of question (``core.bundled.shapes.question_template``): [correct, total].
    questions: dict[str, list[int]] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0


def evaluate(model: str | Path | Assistant = NAME, *, split: str = "test", data_root: str | Path | None = None,
             limit: int | None = None, per_task: int | None = None, batch_size: int = 32, small: bool = False,
             progress: Callable[[int, int], None] | None = None, records: Path | None = None
             ) -> dict[str, TaskScore]:
    """Answer every held-out record of the mix through :meth:`mmassist.core.Assistant.chat` (greedy) and
    score exact matches per task (digits and motion captions included in their task).

    :param model: ``"starter"``, a model folder, or a loaded :class:`~mmassist.core.Assistant`.
    :param limit: score only the first ``limit`` records (for a quick look).
    :param per_task: score only the first ``per_task`` records of each task (a balanced sample, for a
        slower model).
    :param small: score on the small builds of the bundled data (for tests).
    :param records: another file of records to score instead of the mix's ``split`` (its media paths
        relative to the bundled data folder, its ids naming their task as the mix's do).
    """
    import dataclasses

    assistant = model if isinstance(model, Assistant) else Assistant.from_pretrained(model)
    root = bundled.build_all(Path(data_root) if data_root is not None else bundled.default_root(), small=small)
    file = Path(records) if records is not None else root / f"mix_{split}.jsonl"
    examples = load_examples(file, TaskConfig(kind="chat"), DataConfig())
    ids = [json.loads(line)["id"] for line in open(file, encoding="utf-8")]
    rows = []  # (example, task, question, reference)
    for ex, rid in zip(examples, ids):
        question = plain_question(next(m["content"] for m in ex.messages if m["role"] == "user"))
        reference = next(m["content"] for m in reversed(ex.messages) if m["role"] == "assistant")
        rows.append((ex, task_of(rid, question), question, reference))
    if per_task is not None:
        counts: dict[str, int] = {}
        kept = []
        for r in rows:
            counts[r[1]] = counts.get(r[1], 0) + 1
            if counts[r[1]] <= per_task:
                kept.append(r)
        rows = kept
    if limit is not None:
        rows = rows[:limit]
    gen = dataclasses.replace(assistant.cfg.generation, temperature=0.0)
    scores: dict[str, TaskScore] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        prompts = [encode_example(r[0], assistant.processor, assistant.cfg, for_training=False) for r in chunk]
        answers = assistant.generate_batch(prompts, gen)
        for (_, task, question, reference), answer in zip(chunk, answers):
            s = scores.setdefault(task, TaskScore(task, 0, 0))
            right = int(answer.strip() == reference.strip())
            s.total += 1
            s.correct += right
            if task == "shapes_qa":
                tally = s.questions.setdefault(question_template(question), [0, 0])
                tally[0] += right
                tally[1] += 1
        if progress is not None:
            progress(min(start + batch_size, len(rows)), len(rows))
    return {t: scores[t] for t in [*TASKS, *sorted(set(scores) - set(TASKS))] if t in scores}  # TASKS' order first


def report(scores: dict[str, TaskScore], *, by_question: bool = False) -> str:
    """A Markdown table of per-task scores, with the targets; ``by_question`` adds a second table, the
    shape questions scored per kind of question, worst first."""
    lines = ["| task | score | correct / total | target |", "| --- | ---: | ---: | ---: |"]
    for task, s in scores.items():
        target = f"{TARGETS[task]:.2f}" if task in TARGETS else ""
        lines.append(f"| {TASKS.get(task, task)} | {s.score:.3f} | {s.correct} / {s.total} | {target} |")
    questions = scores["shapes_qa"].questions if by_question and "shapes_qa" in scores else {}
    if questions:
        lines += ["", "| shape question | score | correct / total |", "| --- | ---: | ---: |"]
        for template, (right, total) in sorted(questions.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[0])):
            lines.append(f"| {template} | {right / total:.3f} | {right} / {total} |")
    return "\n".join(lines)
