"""Named entities in the web app: the Entities tab's highlighted text and Chat's answer, for a model
fine-tuned with ``task.kind: token_classification`` (no gradio here: the tab in :mod:`mmassist.ui.app`)."""

from __future__ import annotations

from typing import Any

from mmassist.core.errors import UnsupportedInputError
from mmassist.ui.models import LoadedModel


def find_entities(model: LoadedModel, text: str) -> dict[str, Any]:
    """``{"text", "entities": [{"entity", "text", "start", "end"}]}``: the value Gradio's HighlightedText
    shows, with each entity's character span."""
    kind = model.assistant.cfg.task.kind
    if kind != "token_classification":
        raise UnsupportedInputError(f"the model {model.name} was fine-tuned for {kind}, not to find entities: "
                                    "pick a token classification model (task.kind: token_classification) "
                                    "in the Model box")
    if not text or not text.strip():
        raise UnsupportedInputError("the text is empty; type or paste the text to find entities in")
    with model.lock:
        entities = model.assistant.tag(text)
    return {"text": text, "entities": entities}


def entities_markdown(found: dict[str, Any]) -> str:
    """Chat's answer for a token classification model: each entity in bold with its type."""
    if not found["entities"]:
        return "*(no entities found)*"
    return ", ".join(f"**{e['text']}** ({e['entity']})" for e in found["entities"])
