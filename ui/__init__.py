"""The Gradio web app. Only this package imports gradio, and only when the app is built.

    from mmassist.ui import build_app, launch
    launch("runs/my-model")                 # or: mmassist ui --model runs/my-model
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app", "launch"]


def __getattr__(name: str) -> Any:  # lazy: `import ui` must not import gradio
    if name == "build_app":
        from mmassist.ui.app import build_app

        return build_app
    if name == "launch":
        from mmassist.ui.server import launch

        return launch
    raise AttributeError(f"module 'ui' has no attribute {name!r}")
