"""``chat``: plain conversation without media: greetings, "what can you do?" and polite refusals.

Every prompt kind has one canonical answer that says what the starter assistant can do. The splits
are made by prompt, not by record: each base prompt and its spelling variants (capitalised,
punctuated) fall in one split, so validation and test prompts are paraphrases never seen in training.
"""

from __future__ import annotations

import random
from pathlib import Path

from mmassist.core.recipes.bundled.common import SPLITS, Built, llava_record, write_jsonl

SEED = 5
SPLIT_SHARES = (0.7, 0.15, 0.15)
SMALL_PROMPTS_PER_KIND = 2  # per split, in a small build
SKILLS = ("describe pictures of simple shapes, read handwritten digits, tell which way a shape moves "
          "in a short clip, and judge whether a movie review is positive or negative")
ANSWERS = {
    "greeting": f"Hello! I can {SKILLS}. What would you like to try?",
    "capabilities": f"I can {SKILLS}. Send me a picture, a short video or a review.",
    "out_of_scope": f"Sorry, I can't help with that. I can {SKILLS}.",
}
QUESTION_WORDS = frozenset("what what's how who where when why which can could is are do does".split())
PROMPTS = {
    "greeting": (
        "hi", "hello", "hey", "good morning", "good afternoon", "good evening", "hi there", "hello there",
        "hey there", "greetings", "howdy", "hiya", "morning", "hey you", "hello assistant", "hi assistant",
        "good day", "is anyone there", "hey, how are you", "hi, nice to meet you",
    ),
    "capabilities": (
        "what can you do", "what are you able to do", "help", "what are your skills", "how can you help me",
        "what do you do", "what kind of things can you help with", "tell me what you can do",
        "what are you good at", "what tasks can you handle", "what can i ask you", "what are your features",
        "hi, what can you do", "what is this assistant for", "how do i use you", "list your abilities",
        "what do you know how to do", "can you tell me what you are capable of", "what are you for",
        "what kinds of questions can you answer",
    ),
    "out_of_scope": (
        "write me a poem", "what's the weather like today", "book a flight to paris", "tell me a joke",
        "translate this sentence into french", "what's the capital of france", "write some python code",
        "order a pizza for me", "who won the world cup", "set an alarm for 7 am", "what time is it",
        "play some music", "solve x squared minus four equals zero", "summarize this article for me",
        "recommend a good restaurant nearby", "send an email to my boss", "what's the stock price of apple",
        "write my history essay", "how do i fix my car's brakes", "give me medical advice about my headache",
        "what is the meaning of life", "draw me a picture of a horse", "help me plan my wedding",
        "what's the latest news", "find me a cheap hotel in rome", "explain quantum computing",
        "call my mother", "how much should i invest in bitcoin", "write a song about the sea",
        "turn off the lights",
    ),
}


def variants(prompt: str, kind: str) -> list[str]:
    """The prompt typed three ways: as is, capitalised and punctuated, and lower-case but punctuated
    (a request gets ``, please`` instead)."""
    last_clause = prompt.split(",")[-1].split()
    is_question = last_clause[0] in QUESTION_WORDS
    mark = "?" if is_question else "!" if kind == "greeting" else "."
    third = prompt + ", please" if kind == "out_of_scope" and not is_question else prompt + mark
    return list(dict.fromkeys([prompt, prompt[0].upper() + prompt[1:] + mark, third]))


def split_prompts(seed: int = SEED) -> dict[str, dict[str, list[str]]]:
    """``{split: {kind: [base prompt, ...]}}``: each kind's prompts shuffled and cut by SPLIT_SHARES."""
    rng = random.Random(seed)
    out: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for kind, prompts in PROMPTS.items():
        order = list(prompts)
        rng.shuffle(order)
        n_val = max(1, round(len(order) * SPLIT_SHARES[1]))
        n_test = max(1, round(len(order) * SPLIT_SHARES[2]))
        out["test"][kind] = order[:n_test]
        out["validation"][kind] = order[n_test:n_test + n_val]
        out["train"][kind] = order[n_test + n_val:]
    return out


def build(out: Path, *, small: bool = False) -> Built:
    """Write ``qa_{split}.jsonl``."""
    counts = {}
    for split, kinds in split_prompts().items():
        if small:
            kinds = {kind: prompts[:SMALL_PROMPTS_PER_KIND] for kind, prompts in kinds.items()}
        records = []
        for kind, prompts in kinds.items():
            for prompt in prompts:
                for text in variants(prompt, kind):
                    records.append(llava_record(f"chat-{split}-{len(records):04d}", text, ANSWERS[kind]))
        write_jsonl(out / f"qa_{split}.jsonl", records)
        counts[split] = {"qa": len(records), **{f"{k}_prompts": len(v) for k, v in kinds.items()}}

    return Built(
        description=(
            "Plain chat without media: greetings, questions about what the assistant can do, and "
            "out-of-scope requests (a poem, the weather, a flight...), each kind with one canonical "
            "answer that says what the starter assistant can do (\"" + ANSWERS["capabilities"] + "\"); "
            "out-of-scope requests get a polite refusal. Splits are made by base prompt "
            f"({SPLIT_SHARES[0]:.0%}/{SPLIT_SHARES[1]:.0%}/{SPLIT_SHARES[2]:.0%} of each kind), each with up "
            "to three spellings, so validation and test prompts are paraphrases not seen in training."
        ),
        seed=SEED,
        counts=counts,
        files={"qa_{split}.jsonl": "LLaVA records without media, one prompt and answer each"},
        extra={"answers": ANSWERS},
    )
