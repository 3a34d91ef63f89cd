"""The Chat tab's logic: Gradio's chat history to the assistant's messages, and a streamed answer.

Gradio gives the history as ``{"role", "content"}`` messages whose content is a string, a file
(``{"path": ...}``) or a list of typed parts (``{"type": "text" | "file", ...}``). Files become
typed parts of the modality the plugins route them to (``{"type": "image", "image": path}``), so
earlier turns keep their pictures and clips. A user turn that failed (no answer, or an error note
titled :data:`ERROR_TITLE` as its answer) is left out, so one bad file does not break every later turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mmassist.core.errors import UnsupportedInputError
from mmassist.core.contract.host import Host
from mmassist.core.runtime.model import placeholder_token
from mmassist.core.runtime.processor import caption_prompt
from mmassist.ui.tagging import entities_markdown, find_entities
from mmassist.ui.models import LoadedModel

Turn = tuple[str, str, list[str]]  # (role, text, file paths)
ERROR_TITLE = "Error"  # the metadata title of an error note in the conversation


def file_path(item: Any) -> str | None:
    """The server path of a file item in any of Gradio's shapes, else None."""
    if isinstance(item, Mapping):
        if item.get("type") == "file" or "file" in item:
            return file_path(item.get("file"))
        if isinstance(item.get("path"), str):
            return item["path"]
        return None
    value = getattr(item, "value", None)  # a component (gr.Image(...)) placed in the history
    if value is not None and not isinstance(item, (str, bytes)):
        return file_path(value) if isinstance(value, Mapping) else (value if isinstance(value, str) else None)
    return None


def text_of(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and item.get("type") == "text":
        return str(item.get("text", ""))
    return None


def history_turns(history: Sequence[Mapping[str, Any]] | None) -> list[Turn]:
    """Gradio's messages as (user, assistant) turn pairs; a user message that failed (no answer, or an
    error note as its answer) is dropped with the note."""
    turns: list[Turn] = []
    for msg in history or []:
        role = msg.get("role")
        content = msg.get("content")
        items = content if isinstance(content, list) else [content]
        text = "\n".join(t for t in (text_of(x) for x in items) if t)
        if role == "assistant" and (msg.get("metadata") or {}).get("title") == ERROR_TITLE:
            turns.append(("error", text, []))  # the turn before it failed: both are left out
        elif role == "user":
            turns.append(("user", text, [p for p in (file_path(x) for x in items) if p]))
        elif role == "assistant" and turns and turns[-1][0] == "assistant":
            turns[-1] = ("assistant", "\n".join(t for t in (turns[-1][1], text) if t), [])
        elif role == "assistant" and turns:
            turns.append(("assistant", text, []))
    kept: list[Turn] = []
    for turn, after in zip(turns, turns[1:]):
        if turn[0] == "user" and after[0] == "assistant":
            kept += [turn, after]
    return kept


def modality_of(path: str, model: LoadedModel, host: Host) -> str:
    """The modality a plugin reads ``path`` as; an error when the model takes no such input."""
    spec, _ = host.route(path)
    encoders = model.assistant.cfg.encoders
    if spec.modality not in encoders:
        reads = ", ".join(encoders) or "text only"
        raise UnsupportedInputError(f"this model takes no {spec.modality} input (it reads {reads}); "
                                    f"remove {Path(path).name} or pick another model")
    return spec.modality


def user_message(text: str, files: Sequence[str], model: LoadedModel, host: Host) -> dict[str, Any]:
    """A user turn as typed parts: each file where the plugins route it, then the text.

    Media without text get the model's own prompt (its caption prompt), as in training.
    """
    parts: list[dict[str, Any]] = []
    for f in files:
        modality = modality_of(f, model, host)
        parts.append({"type": modality, modality: f})
    text = text or ""
    if parts and not text.strip():
        prompt = model.assistant.cfg.task.prompt
        text = prompt if prompt and not any(placeholder_token(p["type"]) in prompt for p in parts) \
            else caption_prompt(parts[0]["type"])
    if not parts and not text.strip():
        raise UnsupportedInputError("the message is empty; type a question or attach a file")
    if parts:
        text = "\n" + text  # "<image>\nprompt", the LLaVA layout the models are trained on
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


def conversation(history: Sequence[Mapping[str, Any]] | None, text: str, files: Sequence[str],
                 model: LoadedModel, host: Host, system_prompt: str = "") -> list[dict[str, Any]]:
    """The whole conversation for the assistant: a system message when ``system_prompt`` is given (it
    replaces the model's own, ``task.system_prompt``), earlier answered turns, then the new message."""
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    for role, turn_text, turn_files in history_turns(history):
        if role == "user":
            messages.append(user_message(turn_text, turn_files, model, host))
        else:
            messages.append({"role": "assistant", "content": turn_text})
    messages.append(user_message(text, files, model, host))
    return messages


def answer(model: LoadedModel, host: Host, message: Mapping[str, Any] | str,
           history: Sequence[Mapping[str, Any]] | None, system_prompt: str = "", **generation: Any) -> Iterator[str]:
    """Yield the growing answer to ``message`` (Gradio's ``{"text", "files"}`` dict or a string), after a
    system message ``system_prompt`` when one is given."""
    if isinstance(message, str):
        text, files = message, []
    else:
        text = message.get("text") or ""
        files = [p for p in (f if isinstance(f, str) else file_path(f) for f in message.get("files") or []) if p]
    asst = model.assistant
    if asst.cfg.task.kind == "classification":
        yield classify(model, host, text, files)
        return
    if asst.cfg.task.kind == "token_classification":
        if files:
            raise UnsupportedInputError("this model finds entities in text; type the text, attach no file")
        yield entities_markdown(find_entities(model, text))
        return
    messages = conversation(history, text, files, model, host, system_prompt)
    with model.lock:
        pieces = asst.chat(messages, stream=True, **generation)
    shown = ""
    for piece in model.stream(pieces):
        shown += piece
        yield shown
    if not shown:
        yield "*(the model gave an empty answer)*"


def classify(model: LoadedModel, host: Host, text: str, files: Sequence[str]) -> str:
    """A classifier's answer: the label and each class's probability."""
    if len(files) > 1:
        raise UnsupportedInputError("a classifier takes one input at a time; attach one file or type the text")
    item = files[0] if files else text
    if files:
        modality_of(files[0], model, host)
    if not files and not text.strip():
        raise UnsupportedInputError("the message is empty; type the text to classify or attach a file")
    with model.lock:
        scores = model.assistant.classify(item, return_scores=True)
    label = max(scores, key=scores.get)
    shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(scores.items(), key=lambda kv: -kv[1]))
    return f"**{label}** ({shown})"
