"""Third-party plugins, installed for real and found through their entry points.

``examples/mmassist-audio`` and a handful of deliberately broken distributions are pip-installed
(``--target``, no network, no build isolation) into temporary folders. Each check then runs in a
fresh interpreter whose ``PYTHONPATH`` is that folder, so the host discovers the plugins from their
installed ``dist-info`` exactly as it would after ``pip install mmassist-audio``; ``core`` and the
built-in plugins come from the editable install as usual. The subprocesses print JSON and the
tests below assert on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AUDIO_EXAMPLE = REPO / "examples" / "mmassist-audio"
TIMEOUT_S = 300


# -- helpers ----------------------------------------------------------------------------------


def _require_pip() -> None:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"pip is not usable in this interpreter ({sys.executable}): {probe.stderr.strip()}")


def pip_install_target(sources: list[Path], target: Path) -> None:
    """Build and install local distributions into ``target``, offline, with the venv's setuptools."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target),
           *map(str, sources)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=_clean_env())
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMASSIST_") and k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run_python(args: list[str], site: Path) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root with only ``site`` added to the import path."""
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=_clean_env(PYTHONPATH=str(site)))


def run_json(script: str, site: Path, *args: str) -> dict:
    """Run a script that prints one JSON object on its last line; return that object."""
    done = run_python(["-c", textwrap.dedent(script), *args], site)
    assert done.returncode == 0, f"subprocess failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- mmassist-audio ---------------------------------------------------------------------------

AUDIO_SCRIPT = """
    import json, os, sys
    from pathlib import Path

    from mmassist import core
    import mmassist_audio
    from mmassist.core.contract.testing import check_encoder

    tmp = Path(sys.argv[1])
    host = core.Host()
    report = {
        "module": mmassist_audio.__file__,
        "rows": [r for r in host.describe() if r["name"] == "audio/logmel"],
        "failed": [str(f) for f in host.failed_plugins],
    }

    def loaded(**env):
        os.environ.update(env)  # the host reads its switches when it is created
        try:
            return "audio/logmel" in core.Host().encoders
        finally:
            for k in env:
                del os.environ[k]

    report["load_entrypoints_false"] = "audio/logmel" in core.Host(load_entrypoints=False).encoders
    report["no_plugins"] = loaded(MMASSIST_NO_PLUGINS="1")
    report["load_by_entry_point"] = loaded(MMASSIST_LOAD_PLUGINS="audio")
    report["load_by_distribution"] = loaded(MMASSIST_LOAD_PLUGINS="mmassist-audio")
    report["load_only_others"] = loaded(MMASSIST_LOAD_PLUGINS="something-else")

    spec = host.encoders.get("audio/logmel")
    wav_path, wav_bytes = spec.example_inputs(tmp)
    report["route_path"] = host.route(wav_path)[0].name
    upload = core.Media("application/octet-stream", data=wav_bytes, name="upload")
    report["route_octet_stream"] = host.route(upload)[0].name
    out = check_encoder(spec, tmp / "contract")
    report["contract_shape"] = list(out.features.shape)
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def audio_site(tmp_path_factory) -> Path:
    """examples/mmassist-audio, pip-installed into a fresh folder (from a copy: no build/ in the repo)."""
    _require_pip()
    root = tmp_path_factory.mktemp("audio")
    source = root / "src"
    shutil.copytree(AUDIO_EXAMPLE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = root / "site"
    pip_install_target([source], site)
    return site


@pytest.fixture(scope="module")
def audio_report(audio_site, tmp_path_factory) -> dict:
    return run_json(AUDIO_SCRIPT, audio_site, str(tmp_path_factory.mktemp("audio_run")))


def test_audio_is_installed_as_a_distribution(audio_site, audio_report):
    assert (audio_site / "mmassist_audio-0.1.0.dist-info").is_dir()
    assert Path(audio_report["module"]).is_relative_to(audio_site), "the installed copy must be used"


def test_host_lists_audio_with_its_distribution(audio_report):
    assert audio_report["failed"] == []
    [row] = audio_report["rows"]
    assert (row["distribution"], row["version"], row["plugin"]) == ("mmassist-audio", "0.1.0", "audio")
    assert row["modality"] == "audio" and "audio/wav" in row["mime_types"]


def test_plugin_switches(audio_report):
    assert audio_report["load_entrypoints_false"] is False
    assert audio_report["no_plugins"] is False
    assert audio_report["load_by_entry_point"] is True
    assert audio_report["load_by_distribution"] is True
    assert audio_report["load_only_others"] is False


def test_routing_to_audio(audio_report):
    assert audio_report["route_path"] == "audio/logmel"  # by MIME type (the host's default router)
    assert audio_report["route_octet_stream"] == "audio/logmel"  # by content (the plugin's route_input)


def test_audio_meets_the_encoder_contract(audio_report):
    batch, tokens, dim = audio_report["contract_shape"]
    assert (batch, dim) == (2, 32) and tokens >= 1


def test_audio_plugins_own_tests_pass(audio_site):
    done = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(AUDIO_EXAMPLE / "tests")], audio_site)
    assert done.returncode == 0, f"examples/mmassist-audio tests failed:\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"


# -- broken plugins ---------------------------------------------------------------------------

# Distribution name -> (entry-point name, module source). Each is a one-module distribution.
BROKEN_PLUGINS = {
    "mmassist-broken-import": ("broken_import", """
        raise RuntimeError("broken on purpose at import")
    """),
    "mmassist-broken-register": ("broken_register", """
        from mmassist import core

        @core.hookimpl
        def register_encoders(register):
            raise RuntimeError("broken on purpose in register_encoders")
    """),
    "mmassist-misspelled-hook": ("misspelled_hook", """
        from mmassist import core

        @core.hookimpl
        def register_encoder(register):  # the hook is register_encoders
            pass
    """),
    "mmassist-duplicate-image": ("duplicate_image", """
        from dataclasses import dataclass

        from mmassist import core

        @dataclass
        class DuplicateConfig:
            pass

        @core.hookimpl
        def register_encoders(register):
            register(core.EncoderSpec(name="image/timm", modality="image", mime_types=("image/png",),
                                      config_cls=DuplicateConfig, build=lambda cfg: None))
    """),
}
# A well-behaved neighbour: the broken ones must not stop it from loading.
GOOD_PLUGIN = ("mmassist-toy", "toy", """
    from dataclasses import dataclass

    from mmassist import core

    @dataclass
    class ToyConfig:
        pass

    @core.hookimpl
    def register_encoders(register):
        register(core.EncoderSpec(name="toy/ok", modality="toy", mime_types=("text/x-toy",),
                                  config_cls=ToyConfig, build=lambda cfg: None))
""")

EXPECTED_FAILURES = {  # entry-point name -> (stage, words the error must contain)
    "broken_import": ("import", ["RuntimeError", "broken on purpose at import"]),
    "broken_register": ("register", ["RuntimeError", "broken on purpose in register_encoders"]),
    "misspelled_hook": ("validate", ["register_encoder"]),
    "duplicate_image": ("register", ["image/timm", "mmassist.plugins.image", "duplicate_image", "mmassist-duplicate-image"]),
}

BROKEN_SCRIPT = """
    import dataclasses, json

    from mmassist import core

    host = core.Host()
    image = host.encoders.get("image/timm")
    print(json.dumps({
        "builtins": core.Host(load_entrypoints=False).encoders.names(),
        "names": host.encoders.names(),
        "image_owner": [image.plugin, image.distribution],
        "failed": [dataclasses.asdict(f) for f in host.failed_plugins],
        "still_registered": [n for n in ["broken_import", "broken_register", "misspelled_hook",
                                         "duplicate_image"] if host.pm.has_plugin(n)],
    }))
"""


def _write_distribution(folder: Path, dist: str, entry_point: str, source: str) -> Path:
    module = dist.replace("-", "_")
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.0.1"

        [project.entry-points.mmassist]
        {entry_point} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (folder / f"{module}.py").write_text(textwrap.dedent(source).lstrip())
    return folder


@pytest.fixture(scope="module")
def broken_report(tmp_path_factory) -> dict:
    """All broken plugins (and one good one) installed with one pip call into one folder."""
    _require_pip()
    root = tmp_path_factory.mktemp("broken")
    plugins = {**BROKEN_PLUGINS, GOOD_PLUGIN[0]: GOOD_PLUGIN[1:]}
    sources = [_write_distribution(root / "src" / dist, dist, ep, src) for dist, (ep, src) in plugins.items()]
    site = root / "site"
    pip_install_target(sources, site)
    return run_json(BROKEN_SCRIPT, site)


def test_host_survives_broken_plugins(broken_report):
    assert "image/timm" in broken_report["builtins"]
    assert set(broken_report["builtins"]) <= set(broken_report["names"])
    assert broken_report["image_owner"] == ["mmassist.plugins.image", "mmassist"], "the duplicate must not replace it"
    assert "toy/ok" in broken_report["names"], "a good plugin next to broken ones still loads"
    assert broken_report["still_registered"] == []
    failed_names = [f["name"] for f in broken_report["failed"]]
    assert sorted(failed_names) == sorted(EXPECTED_FAILURES), broken_report["failed"]


@pytest.mark.parametrize("entry_point", sorted(EXPECTED_FAILURES))
def test_broken_plugin_is_recorded(broken_report, entry_point):
    [failure] = [f for f in broken_report["failed"] if f["name"] == entry_point]
    stage, words = EXPECTED_FAILURES[entry_point]
    dist = next(d for d, (ep, _) in BROKEN_PLUGINS.items() if ep == entry_point)
    assert (failure["distribution"], failure["version"], failure["stage"]) == (dist, "0.0.1", stage)
    for word in words:
        assert word in failure["error"], f"{word!r} missing from: {failure['error']}"
