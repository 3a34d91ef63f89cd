"""The benchmark runs and reports every headline figure. No timing is asserted: speed lives in bench/."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_prints_every_key_as_a_finite_number():
    from bench import KEYS

    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # one JSON object, nothing else on stdout
    assert result["errors"] == {}
    for key in KEYS:
        value = result.get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value), f"{key} = {value!r}"
    assert set(result["sections"]) == {"video", "finetune", "generate", "scaling", "flops", "serve", "tasks"}
    assert result["machine"]["torch"] and result["machine"]["cores"]


def test_unknown_measurement_is_refused():
    out = subprocess.run([sys.executable, "-m", "bench", "--only", "nosuch"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "nosuch" in out.stderr


def test_generate_measures_a_trained_model_by_name():
    out = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", "--only", "generate",
                          "--model", "starter"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["errors"] == {}
    section = result["sections"]["generate"]
    assert "model starter" in section["title"]
    assert {r["question"] for r in section["rows"]} == {"text question", "picture question"}  # the starter sees
    for key in ("generate_overhead_vs_hf", "first_token_s_text"):
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
