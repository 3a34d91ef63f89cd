"""Where mmassist keeps what it builds for a user: bundled datasets, an installed starter, converted models."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "MMASSIST_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$MMASSIST_CACHE/<parts>``, else ``$XDG_CACHE_HOME/mmassist/<parts>``, else ``~/.cache/mmassist/<parts>``.

    Never the installed package's own folder, which may be read-only and is replaced on upgrade.
    """
    if os.environ.get(ENV_CACHE):
        root = Path(os.environ[ENV_CACHE]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "mmassist"
    return root.joinpath(*parts)
