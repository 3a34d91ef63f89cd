"""The starter assistant: its recipe trains end to end, the shipped model loads offline from the
package's own files and answers fixed held-out examples of every task correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import core
from core import bundled, starter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return bundled.build_all(tmp_path_factory.mktemp("bundled") / "data", small=True)


def test_the_recipe_trains_end_to_end_and_installs(small_data, tmp_path):
    res = starter.train(tmp_path / "run", data_root=small_data, small=True,
                        **{"training.max_steps": 2, "training.batch_size": 4, "training.eval_every": None,
                           "training.save_every": None, "training.eval_generate": 2,
                           "generation.max_new_tokens": 4, "data.test": None})
    assert res.output_dir == tmp_path / "run" / "model"
    tok = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())
    assert len(tok["model"]["merges"]) > 100  # BPE learned on the mix, not bytes only
    cfg = core.FusionConfig.from_file(res.output_dir / "config.json")
    assert set(cfg.encoders) == {"image", "video", "text"} and cfg.encoders["text"].freeze
    assert cfg.task.encode_user_text and cfg.decoder.init["model_type"] == "llama"
    installed = starter.install_model(res.output_dir, tmp_path / "installed")
    assert sorted(p.name for p in installed.iterdir()) == sorted(
        n for n in starter.MODEL_FILES if (res.output_dir / n).is_file())
    scores = starter.evaluate(installed, data_root=small_data, small=True, limit=12, batch_size=6)
    assert sum(s.total for s in scores.values()) == 12
    assert set(scores) <= set(starter.TASKS)
    assert "| task | score |" in starter.report(scores)


@pytest.mark.parametrize("rid, question, task", [
    ("shapes-caption-test-00001", "Describe this image.", "shapes_caption"),
    ("shapes-00001-0", "Where is the square?", "shapes_qa"),
    ("digits-caption-test-00003", "Describe this image.", "digits"),
    ("digits-0001-1", "Which digit is this?", "digits"),
    ("motion-caption-test-00002", "Describe this video.", "motion_other"),
    ("motion-00000-0", "Where does the circle move?", "motion"),
    ("motion-00000-1", "What shape is moving?", "motion_other"),
    ("sentiment-test-00001", "Review: ...", "sentiment"),
    ("chat-test-0001", "hello", "chat"),
])
def test_records_are_scored_under_their_task(rid, question, task):
    assert starter.task_of(rid, question) == task
