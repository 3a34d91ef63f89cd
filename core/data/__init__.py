"""Data readers: conversation, caption and classification files into :class:`Example` records.

Layer: above the runtime (it builds prompts with the runtime's conversation rules), below training.
"""

from mmassist.core.data.readers import (
    CAPTION_FILES,
    Example,
    load_examples,
    load_splits,
    resolve_media_path,
    split_examples,
)

__all__ = ["CAPTION_FILES", "Example", "load_examples", "load_splits",
           "resolve_media_path", "split_examples"]
