"""Every example config parses, and names only encoders that exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmassist import core

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    cfg = core.FusionConfig.from_file(path)
    host = core.Host(load_entrypoints=False)
    for modality, enc in cfg.encoders.items():
        host.encoders.get(enc.name).make_config(enc.config, f"encoders.{modality}.config")
    for split in ("train", "validation", "test"):
        value = getattr(cfg.data, split)
        if value is not None and not value.startswith("bundled:"):
            assert Path(value).exists(), f"{path.name}: data.{split} {value} does not exist"
