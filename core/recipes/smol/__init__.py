"""The starter assistant on a pretrained instruct LM (SmolLM2-135M-Instruct), taught to see with
:func:`mmassist.core.training.finetune` the way LLaVA is taught:

1. **backbones**: the tiny starter's trained image and video backbones (``test_resnet``, trained here on the
   bundled shapes, digits and clips), taken out of its checkpoint;
2. **align**: only the fusion module learns (MLP projectors, position and temporal embeddings), the LM and
   the backbones frozen, on the mix's picture and clip turns;
3. **tune**: LoRA on every linear layer of the LM, with the fusion module and the backbones (at a low
   rate), over the bundled mix with the LM's own answers to general prompts replayed beside it
   (:mod:`.replay`), and hand-written answers about itself;
4. **converse**: the same adapters go on over mixed conversations of two to six turns (pictures, clips,
   reviews and small talk in one conversation, each picture asked about in its own turn), beside as many
   single-turn records of the tune mix: tuned on single turns only, the model answered a digit a few turns
   into a conversation about another picture (0.18 right against 0.88 alone) and small talk after a terse
   answer as tersely ("Good afternoon!" -> "yes").

Every stage resumes: a finished stage is kept, and a stopped tune run continues from its last checkpoint
(``training.save_every``), so the hours this takes on a CPU can be spread over several sittings::

    from mmassist.core.recipes import smol
    smol.train(Path("runs/smol"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from mmassist.core.recipes import bundled
from mmassist.core.recipes.bundled import chat
from mmassist.core.recipes.bundled.common import llava_record, read_jsonl, replace_jsonl
from mmassist.core.recipes.smol import photos
from mmassist.core.recipes.smol.prompts import IDENTITY, KNOWLEDGE, knowledge_correct, replay_prompts
from mmassist.core.recipes.smol.replay import build_replay
from mmassist.core.recipes.starter import task_of
from mmassist.core.recipes.starter.paths import SHIPPED_ROOT
from mmassist.core.runtime.assistant import Assistant
from mmassist.core.runtime.config import FusionConfig
from mmassist.core.training.finetune import finetune, resume_conflicts
from mmassist.core.training.train_state import drop_moments

DECODER = "smollm2-135m-instruct"
RECIPE = Path(__file__).resolve().parent / "recipe.yaml"
# Stages finished in an earlier sitting, shipped as their model folders (``progress/<stage>``: the trained
# fusion weights, a few MB), or checkpoints of stages a sitting could not finish
# (``progress/<stage>/checkpoints/step-N``, optimizer state included), so that the next sitting goes on.
PROGRESS = Path(__file__).resolve().parent / "progress"
IMAGE_WEIGHTS = "image_backbone.safetensors"
VIDEO_WEIGHTS = "video_backbone.safetensors"
MIX_SEED = 23
# The replayed general answers, repeated in the tune mix this many times (each about 6% of the mix once).
REPLAY_REPEATS = 2
IDENTITY_REPEATS = 20
# Crops of photos in the tune mix, each answered "I can't tell..." (:mod:`.photos`): about 2% of it.
PHOTOS = 800
# Validation records (a fixed sample of the mix's): the loss on all 2,800 took 4 minutes an evaluation.
VALIDATION_SIZE = 400
ALIGN = {"decoder.freeze": True, "training.max_steps": 400, "training.lr": 1.0e-3, "training.eval_every": 200}
TUNE = {"training.lora.enabled": True, "training.lora.r": 16, "training.lora.alpha": 32,
        "training.lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "encoders.image.freeze": False, "encoders.image.lr": 2.0e-5,
        "encoders.video.freeze": False, "encoders.video.lr": 2.0e-5,
        # 3,200 steps: at 1,600 (25,600 records, under one pass over the mix) validation was still rising
        # (0.61, 0.72, 0.72, 0.76 at 400 to 1,600) and shape captions were right 0.40 of the time.
        "training.max_steps": 3200, "training.lr": 2.0e-4, "training.eval_every": 400,
        # Batches of similar lengths: a replayed answer of 150 tokens no longer pads 15 shape questions of 40.
        "training.group_by_length": True}

# The converse stage: continues the tune stage's adapters (init_from) over mixed conversations.
CONVERSE = {**TUNE, "encoders.image.lr": 1.0e-5, "encoders.video.lr": 1.0e-5,
            # 400 steps of 16 records: about half a pass over the 6,000 conversations and as many single-turn
            # records (~21 s a step in float32 on a 2-core AVX2 CPU, where bf16 is far slower: 2.3 h measured).
            "training.max_steps": 400, "training.lr": 1.0e-4, "training.eval_every": 200,
            # Conversations of up to six pictures or clips: 16 of them a batch took over 24 GB (killed for
            # memory at step 3 on this 24 GB machine); 4 a batch, 4 accumulated, is the same step.
            "training.batch_size": 4, "training.grad_accum": 4}
CONVERSATIONS = 6000
# A conversation's turns are drawn from these kinds of record, with these weights.
TURN_KINDS = {"shapes_qa": 3, "shapes_caption": 2, "digits": 2, "motion": 2, "sentiment": 2, "follow_up": 1,
              "small_talk": 2}
MAX_TURNS = 6
MAX_CHARS = 900  # of a conversation's text: about 250 tokens, beside up to six pictures or clips


def general_prompts() -> list[str]:
    """Every replay prompt: :func:`replay_prompts` and the bundled chat's training greetings and requests
    (their canned answers are replaced by the LM's own)."""
    split = chat.split_prompts()["train"]
    bundled_prompts = [v for kind in ("greeting", "out_of_scope") for p in split[kind] for v in chat.variants(p, kind)]
    return list(dict.fromkeys([*replay_prompts(), *bundled_prompts]))


def replay_file(root: Path | None = None, *, small: bool = False) -> Path:
    """The LM's answers to :func:`general_prompts` as LLaVA records (generated once, cached); ``small``: to
    the first four of them only (for tests)."""
    prompts = general_prompts()
    return build_replay(DECODER, prompts[:4] if small else prompts, root=root)


def extract_backbones(out: Path, source: str | Path | None = None) -> tuple[Path, Path]:
    """Save the image and video backbones of the tiny starter (``source``: its model folder; default: the
    one shipped) as weights files the image and video plugins load (``checkpoint_path``)."""
    from safetensors.torch import save_file

    image, video = out / IMAGE_WEIGHTS, out / VIDEO_WEIGHTS
    if image.is_file() and video.is_file():
        return image, video
    tiny = Assistant.from_pretrained(Path(source) if source is not None else SHIPPED_ROOT / "model", device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    for file, module in ((image, tiny.model.encoders["image"].backbone),
                         (video, tiny.model.encoders["video"].frame_encoder.backbone)):
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp),
                  metadata={"format": "pt"})
        os.replace(tmp, file)
    return image, video


def _without_chat(root: Path, split: str) -> list[dict]:
    return [r for r in read_jsonl(root / f"mix_{split}.jsonl") if not r["id"].startswith("chat-")]


def build_mixes(root: Path) -> dict[str, Path]:
    """The data files of the align stage and the evaluations, written into the bundled data folder ``root``
    beside the mix, whose media they share (``smol_<name>.jsonl``): ``align_train`` (the picture and clip
    records of the mix) and ``validation`` (a fixed sample of :data:`VALIDATION_SIZE` of the mix's, without its
    canned chat). The stages have no test file: the tuned model is scored per task on the mix's test split
    (``mmassist eval``), a test report of the align stage's model would be thrown away."""
    train = _without_chat(root, "train")
    validation = _without_chat(root, "validation")
    validation = random.Random(MIX_SEED).sample(validation, min(VALIDATION_SIZE, len(validation)))
    files = {"align_train": [r for r in train if "image" in r or "video" in r], "validation": validation}
    return {name: replace_jsonl(root / f"smol_{name}.jsonl", records) for name, records in files.items()}


def build_tune_mix(root: Path, replay: Path) -> Path:
    """The tune stage's training file ``root/smol_tune_train.jsonl``: the mix without its canned chat, the
    replayed general answers (:data:`REPLAY_REPEATS` times), the answers about itself and :data:`PHOTOS`
    photos it answers it cannot see (:mod:`.photos`), shuffled."""
    identity = [llava_record(f"identity-{i:03d}-{k}", question, answer, {})
                for i, (question, answer) in enumerate(IDENTITY.items()) for k in range(IDENTITY_REPEATS)]
    capability = chat.split_prompts()["train"]["capabilities"]
    identity += [llava_record(f"capability-{i:03d}-{k}", v, IDENTITY["What can you do?"], {})
                 for i, p in enumerate(capability) for k, v in enumerate(chat.variants(p, "capabilities"))]
    tune = (_without_chat(root, "train") + read_jsonl(replay) * REPLAY_REPEATS + identity
            + read_jsonl(photos.build(root, "train", PHOTOS)))
    random.Random(MIX_SEED).shuffle(tune)
    return replace_jsonl(root / "smol_tune_train.jsonl", tune)


def build_converse_mix(root: Path, replay: Path, *, conversations: int = CONVERSATIONS) -> Path:
    """The converse stage's training file ``root/smol_converse_train.jsonl``: ``conversations`` records of two
    to :data:`MAX_TURNS` turns, each turn a training record of the mix (its picture or clip joining the
    conversation's media in order) or a replayed general answer (small talk), :data:`MAX_CHARS` at most, shuffled
    with as many single-turn records of the tune mix (so single questions stay as they were)."""
    pools: dict[str, list[dict]] = {}
    for rec in _without_chat(root, "train"):
        first = rec["conversations"][0]["value"]
        question = first.split("\n", 1)[-1] if first.startswith("<") else first
        task = task_of(rec["id"], question)
        if task in TURN_KINDS:
            pools.setdefault(task, []).append(rec)
    pools["small_talk"] = read_jsonl(replay)
    kinds = [k for k in TURN_KINDS if pools.get(k)]
    weights = [TURN_KINDS[k] for k in kinds]
    rng = random.Random(MIX_SEED + 1)
    records = []
    for c in range(conversations):
        turns: list[dict] = []
        media: dict[str, list[str]] = {}
        chars = 0
        for kind in rng.choices(kinds, weights, k=rng.randint(2, MAX_TURNS)):
            rec = rng.choice(pools[kind])
            length = sum(len(t["value"]) for t in rec["conversations"])
            if turns and chars + length > MAX_CHARS:  # within decoder.max_length, media tokens included
                continue
            chars += length
            for m in ("image", "video"):
                if m in rec:
                    media.setdefault(m, []).append(rec[m])
            turns += rec["conversations"]
        records.append({"id": f"converse-{c:05d}", **media, "conversations": turns})
    single = read_jsonl(root / "smol_tune_train.jsonl")
    records += rng.sample(single, min(conversations, len(single)))
    rng.shuffle(records)
    return replace_jsonl(root / "smol_converse_train.jsonl", records)


def recipe(backbones: tuple[Path, Path] | None = None, data: dict[str, Path] | None = None) -> FusionConfig:
    """``recipe.yaml`` with the backbones' weights files and the data files set."""
    cfg = FusionConfig.from_file(RECIPE)
    changes: dict[str, Any] = {}
    if backbones is not None:
        changes["encoders.image.config.checkpoint_path"] = str(backbones[0].resolve())
        changes["encoders.video.config.backbone.checkpoint_path"] = str(backbones[1].resolve())
    if data is not None:
        changes.update({"data.validation": str(data["validation"]), "data.test": None})
    return cfg.override(**changes) if changes else cfg


def latest_checkpoint(run: Path) -> Path | None:
    """The newest ``run/checkpoints/step-N`` folder, if any."""
    folders = [p for p in (run / "checkpoints").glob("step-*") if (p / "trainer_state.json").is_file()]
    return max(folders, key=lambda p: int(p.name.split("-")[1]), default=None)


STAGES = ("align", "tune", "converse")


def shipped(stage: str, progress: Path = PROGRESS) -> Path | None:
    """What an earlier sitting shipped of ``stage`` (in ``progress``): its finished model folder, or else its
    newest checkpoint, or else None."""
    folder = progress / stage
    return folder if (folder / "final_metrics.json").is_file() else latest_checkpoint(folder)


def ship(run: str | Path, progress: Path = PROGRESS) -> list[Path]:
    """Copy what ``run`` (a :func:`train` folder) has of each stage into ``progress``, for the next sitting to
    go on from: a finished stage's model folder (its files, not its checkpoints: a few MB of trained fusion
    weights and adapters; the LM is referenced), or an unfinished stage's newest checkpoint without its
    optimizer moments (:func:`~mmassist.core.training.train_state.drop_moments`: the tune stage's are 52 MB
    beside 26 MB of weights). Each stage's folder is replaced whole, so one checkpoint at most is kept.
    Returns the folders written."""
    written = []
    for stage in STAGES:
        source = Path(run) / stage
        finished = (source / "final_metrics.json").is_file()
        folder = source if finished else latest_checkpoint(source)
        if folder is None:
            continue
        target = progress / stage if finished else progress / stage / "checkpoints" / folder.name
        if shipped(stage, progress) == target:
            continue
        staging = progress / f".{stage}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        copy = staging / target.relative_to(progress / stage)
        copy.mkdir(parents=True)
        for file in folder.iterdir():
            if file.is_file():
                shutil.copy2(file, copy / file.name)
        if not finished:
            drop_moments(copy)
        shutil.rmtree(progress / stage, ignore_errors=True)
        staging.rename(progress / stage)
        written.append(target)
    return written


def run_stage(cfg: FusionConfig, out: Path, *, callbacks=(), init_from: Path | None = None,
              progress: Path | None = None, **overrides: Any) -> Path:
    """One stage into ``out``: skipped when finished, resumed from its last checkpoint when stopped.

    :param progress: a stage shipped with the recipe (:data:`PROGRESS`) by an earlier sitting: its finished
        model folder (``final_metrics.json``) or a checkpoint of a sitting that ran out of time. A run without
        checkpoints of its own takes the finished stage as it is, or resumes from the checkpoint, when it was
        written with the same config (the same run folder and data); else it starts from its weights
        (``init_from``).
    """
    if (out / "final_metrics.json").is_file():
        return out
    cfg = cfg.override(**overrides)
    resume = latest_checkpoint(out)
    if resume is None and progress is not None and (progress / "config.json").is_file():
        finished = (progress / "final_metrics.json").is_file()
        if resume_conflicts(FusionConfig.from_file(progress / "config.json"), cfg):
            init_from = progress
        elif finished:
            shutil.copytree(progress, out, dirs_exist_ok=True)
            return out
        elif (progress / "trainer_state.json").is_file():
            resume = out / "checkpoints" / progress.name
            shutil.copytree(progress, resume, dirs_exist_ok=True)
    finetune(cfg, output_dir=out, callbacks=callbacks, resume_from=resume,
             init_from=init_from if resume is None else None)
    return out


def train(out: str | Path, *, data_root: str | Path | None = None, callbacks=(), small: bool = False,
          log: Callable[[str], None] = print, **overrides: Any) -> Path:
    """All stages into ``out`` (``out/align``, ``out/tune``, ``out/converse``); returns the last one's folder.

    :param data_root: where the bundled data is (built there if it is not); default: the bundled-data cache,
        or with ``small``, ``out/bundled``.
    :param small: the small builds of the bundled data and two steps a stage (for tests).
    :param overrides: recipe fields to replace in both stages, by dotted name.
    """
    out = Path(out)
    start = time.time()
    if data_root is None:
        data_root = out / "bundled" if small else bundled.default_root()
    root = bundled.build_all(Path(data_root), small=small)
    backbones = extract_backbones(out / "backbones")
    data = build_mixes(root)
    cfg = recipe(backbones, data)
    steps = {"training.max_steps": 2, "training.eval_every": 2, "training.save_every": 2,
             "training.eval_generate": 4, "generation.max_new_tokens": 8} if small else {}
    log(f"smol: align ({time.time() - start:.0f} s)")
    progress = {stage: None if small else shipped(stage) for stage in STAGES}
    align = run_stage(cfg, out / "align", callbacks=callbacks, progress=progress["align"],
                      **{**ALIGN, "data.train": str(data["align_train"]), **steps, **overrides})
    log(f"smol: replay ({time.time() - start:.0f} s)")
    tune_train = build_tune_mix(root, replay_file(small=small))
    log(f"smol: tune ({time.time() - start:.0f} s)")
    tune = run_stage(cfg, out / "tune", callbacks=callbacks, init_from=align, progress=progress["tune"],
                     **{**TUNE, "data.train": str(tune_train), **steps, **overrides})
    log(f"smol: converse ({time.time() - start:.0f} s)")
    converse_train = build_converse_mix(root, replay_file(small=small), conversations=40 if small else CONVERSATIONS)
    converse = run_stage(cfg, out / "converse", callbacks=callbacks, init_from=tune, progress=progress["converse"],
                         **{**CONVERSE, "data.train": str(converse_train), **steps, **overrides})
    (out / "train_time.json").write_text(json.dumps({"seconds": time.time() - start}), encoding="utf-8")
    return converse


def knowledge_score(model: str | Path | Assistant = DECODER, *, batch_size: int = 16,
                    max_new_tokens: int = 48) -> tuple[float, list[dict]]:
    """The share of :data:`~.prompts.KNOWLEDGE` questions answered right (greedy, one question a conversation),
    and every answer. ``model``: an assistant, a model folder, ``"starter"``, or the pretrained decoder's name
    (its own score is the bar the starter must keep 90% of)."""
    asst = model if isinstance(model, Assistant) else Assistant.from_pretrained(model)
    gen = dataclasses.replace(asst.cfg.generation, temperature=0.0, max_new_tokens=max_new_tokens)
    rows = []
    for start in range(0, len(KNOWLEDGE), batch_size):
        chunk = KNOWLEDGE[start:start + batch_size]
        encoded = [asst.processor.encode(asst.processor.conversation(q), add_generation_prompt=True)
                   for q, _ in chunk]
        for (question, accepted), answer in zip(chunk, asst.generate_batch(encoded, gen)):
            rows.append({"question": question, "answer": answer, "right": knowledge_correct(answer, accepted)})
    return sum(r["right"] for r in rows) / len(rows), rows
