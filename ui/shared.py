"""What every tab of the app shares: the plugin host, the models, the fine-tune runner, the model
picker, and how a user's mistake becomes a message in the page."""

from __future__ import annotations

import html
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mmassist.core.errors import ConfigError, MMAssistError
from mmassist.core.contract.host import Host
from mmassist.ui.finetune_job import JobRunner
from mmassist.ui.models import ModelStore

log = logging.getLogger("ui")

_TITLES = {"UndecodableInputError": "Cannot read this file", "UnsupportedInputError": "Unsupported input",
           "DataFormatError": "Problem in the dataset", "JobBusyError": "A fine-tune is running",
           "MissingPluginError": "A plugin is missing", "PluginError": "Plugin problem"}


@dataclass
class Shared:
    """The app's state and the components several tabs use."""

    host: Host
    store: ModelStore
    runner: JobRunner
    runs_dir: Path
    media_types: list[str]  # file extensions the plugins read, for upload boxes
    upload_limit_mb: float
    concurrency: int  # chat / caption requests served at once
    model_box: Any = None  # gr.Dropdown: the model picker
    tabs: Any = None  # gr.Tabs


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into a message in the page (gr.Error); the app keeps serving.

    Anything that is not an :class:`MMAssistError` is a bug: its traceback goes to the server log.
    """
    import gradio as gr

    try:
        yield
    except gr.Error:
        raise
    except MMAssistError as e:
        raise gr.Error(page_text(str(e)), title=error_title(e), print_exception=False) from None
    except Exception as e:
        log.exception("unexpected error in the UI")
        raise gr.Error(page_text(f"unexpected error ({type(e).__name__}: {e}); see the server log"),
                       title="Internal error", print_exception=False) from None


def error_title(error: MMAssistError) -> str:
    """A short heading for an error toast."""
    for cls in type(error).__mro__:
        if cls.__name__ in _TITLES:
            return _TITLES[cls.__name__]
    return "Config problem" if isinstance(error, ConfigError) else "Error"


def page_text(message: str) -> str:
    """An error message for the page (HTML-escaped): uploads named by their file name, not by their
    path in the server's upload cache."""
    from gradio.utils import get_upload_folder

    cache = re.escape(str(Path(get_upload_folder()).resolve()).rstrip("/"))
    message = re.sub(cache + r"/[0-9a-f]{16,}/", "", message)
    return html.escape(message, quote=False)


def media_file_types(host: Host) -> list[str]:
    """File extensions of every non-text modality the installed plugins read (for upload boxes): those
    their MIME types map to and those they declare (:attr:`EncoderSpec.extensions`)."""
    return list(dict.fromkeys(ext for m in host.media_modalities() for ext in host.file_extensions(m)))
