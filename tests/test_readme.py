"""The README's code runs as written, from a fresh clone: every Python block, and every mmassist command of
its shell blocks, in the order a reader meets them, in a folder that has the repository's files.

Two things differ from a reader's run, to keep the suite short: fine-tunes stop after two steps
(``training.max_steps=2``; on the command line without a test report, ``data.test=null``), and
``mmassist eval starter`` scores the first 8 test records (``--limit 8``; with ``--full``, 2 a task and
2 conversations).
A block preceded by ``<!-- readme-test: skip: <why> -->`` is not run (a server, a fragment of a plugin's
code, an hours-long rebuild); so are ``make``, ``torchrun``, ``curl`` and the server commands (``ui``,
``serve``), which other tests drive.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)```(\w+)?\s*$")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(.+?)\s*-->")
NOT_RUN = ("ui", "serve", "train-starter")  # servers (tested in test_ui / test_api), a rebuild of hours
SHORT = ["--set", "training.max_steps=2", "--set", "training.eval_every=2", "--set", "data.test=null"]
pytestmark = pytest.mark.slow


def blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, skip reason)`` of every fenced block at the start of a line."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(2):
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            before = "\n".join(lines[max(0, start - 4): start - 1])
            skip = SKIP.search(before)
            out.append((start, m.group(2), textwrap.dedent("\n".join(body)), skip.group(1) if skip else None))
        i += 1
    return out


def commands(lang: str, code: str) -> list[list[str]]:
    """The mmassist commands of a shell block (in a console block, the ``$`` lines), comments dropped."""
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        if lang == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if line.startswith(".venv/bin/mmassist "):
            out.append(shlex.split(line, comments=True)[1:])
    return out


def test_the_readme_blocks_are_found():
    found = blocks((REPO / "README.md").read_text(encoding="utf-8"))
    langs = [lang for _, lang, _, _ in found]
    assert langs.count("python") >= 6 and langs.count("bash") >= 4
    assert any(skip for *_, skip in found)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the repository's files a reader uses (linked), where runs/ and models are written."""
    folder = tmp_path_factory.mktemp("reader")
    for name in ("core", "examples", "docs"):
        (folder / name).symlink_to(REPO / name)
    return folder


def test_every_block_runs_as_written(workspace, monkeypatch):
    from mmassist import core

    real = core.finetune

    def short_finetune(cfg, **kw):
        return real(cfg, **{**kw, "training.max_steps": 2, "training.eval_every": 2})

    monkeypatch.setattr(core, "finetune", short_finetune)
    monkeypatch.chdir(workspace)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ran, done = [], set()
    for line, lang, code, skip in blocks((REPO / "README.md").read_text(encoding="utf-8")):
        if skip or lang not in ("python", "bash", "console"):
            continue
        if lang == "python":
            namespace: dict = {"__name__": "readme"}
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as e:
                pytest.fail(f"the Python block at README.md:{line} failed: {type(e).__name__}: {e}")
            ran.append(line)
            continue
        for args in commands(lang, code):
            if args[0] in NOT_RUN or tuple(args) in done:  # a command shown twice runs once
                continue
            done.add(tuple(args))
            if args[0] == "finetune":
                args = [*args, *SHORT]
            if args[:2] == ["eval", "starter"]:
                args = [*args, "--limit", "8", *(["--per-task", "2", "--conversations", "2"] if "--full" in args else [])]
            run = subprocess.run([sys.executable, "-m", "mmassist.core", *args], capture_output=True, text=True,
                                 env=env, timeout=600)
            assert run.returncode == 0, f"README.md:{line}: mmassist {shlex.join(args)}\n{run.stderr[-3000:]}"
            ran.append(line)
    assert len(set(ran)) >= 9, ran  # the blocks that ran (a block of repeated commands only counts once)
