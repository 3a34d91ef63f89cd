"""Where the starter lives: a copy the user installed (``mmassist train-starter --install``) in the user
cache, else the one shipped with the package. Both hold ``model/`` (the checkpoint) and ``examples/`` (held-out
examples it answers correctly, with their media: the web app offers them and the tests check them)."""

from __future__ import annotations

from pathlib import Path

from mmassist.core.cache import cache_dir
from mmassist.core.errors import MMAssistError

NAME = "starter"
SHIPPED_ROOT = Path(__file__).resolve().parent


def user_root() -> Path:
    """Where ``mmassist train-starter --install`` puts a newly trained starter: ``<cache>/starter``."""
    return cache_dir(NAME)


def _has_model(root: Path) -> bool:
    return (root / "model" / "manifest.json").is_file()


def install_root() -> Path:
    """The folder holding the starter in use: the user's installed copy if there is one, else the shipped one."""
    for root in (user_root(), SHIPPED_ROOT):
        if _has_model(root):
            return root
    raise MMAssistError(f"the starter model is not installed (neither {user_root() / 'model'} nor "
                        f"{SHIPPED_ROOT / 'model'} has a manifest.json); rebuild it with: "
                        "mmassist train-starter -o runs/starter --install")


def is_installed() -> bool:
    """Whether a starter model is there to load, installed by the user or shipped."""
    return _has_model(user_root()) or _has_model(SHIPPED_ROOT)


def model_path() -> Path:
    """The starter's checkpoint folder (what the name ``starter`` loads)."""
    return install_root() / "model"


def examples_dir() -> Path:
    """The starter's held-out examples: ``examples.json`` and their media."""
    return install_root() / "examples"
