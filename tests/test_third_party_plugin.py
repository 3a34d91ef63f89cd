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


def install_example(example: Path, root: Path) -> Path:
    """An example plugin pip-installed into ``root/site`` (from a copy: no build/ left in the repo)."""
    _require_pip()
    source = root / "src"
    shutil.copytree(example, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    site = root / "site"
    pip_install_target([source], site)
    return site


@pytest.fixture(scope="module")
def audio_site(tmp_path_factory) -> Path:
    """examples/mmassist-audio, pip-installed into a fresh folder."""
    return install_example(AUDIO_EXAMPLE, tmp_path_factory.mktemp("audio"))


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
    "mmassist-bad-router": ("bad_router", """
        from mmassist import core

        @core.hookimpl
        def route_input(media, candidates):
            return "image/not-a-candidate"
    """),
    "mmassist-raising-router": ("raising_router", """
        from mmassist import core

        @core.hookimpl
        def route_input(media, candidates):
            return {}["broken on purpose in route_input"]
    """),
    "mmassist-dup-a": ("dup_a", """
        from dataclasses import dataclass

        from mmassist import core

        @dataclass
        class DupConfig:
            pass

        @core.hookimpl
        def register_encoders(register):
            register(core.EncoderSpec(name="dup/same", modality="dup", mime_types=("text/x-dup",),
                                      config_cls=DupConfig, build=lambda cfg: None))
    """),
}
# The same name from a second distribution: the first by distribution name (mmassist-dup-a) keeps it.
BROKEN_PLUGINS["mmassist-dup-b"] = ("dup_b", BROKEN_PLUGINS["mmassist-dup-a"][1])
# Not broken, but most likely a mistake: a warning in `mmassist plugins`.
FORGOT_HOOKIMPL = ("mmassist-forgot-hookimpl", "forgot_hookimpl", """
    def register_encoders(register):  # @core.hookimpl is missing
        pass
""")
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
    "bad_router": ("route", ["image/not-a-candidate", "not one of the candidates"]),
    "raising_router": ("route", ["KeyError", "broken on purpose in route_input"]),
    "dup_b": ("register", ["dup/same", "dup_a (mmassist-dup-a)", "dup_b (mmassist-dup-b)"]),
}

BROKEN_SCRIPT = """
    import dataclasses, json

    from mmassist import core

    import sys
    from pathlib import Path
    from PIL import Image

    host = core.Host()
    image = host.encoders.get("image/timm")
    png = Path(sys.argv[1]) / "red.png"
    Image.new("RGB", (8, 8), "red").save(png)
    routed = [host.route(png)[0].name for _ in range(2)]  # the broken routers fail once, then are skipped
    print(json.dumps({
        "routed": routed,
        "warnings": host.warnings,
        "dup_owner": host.encoders.get("dup/same").distribution,
        "builtins": core.Host(load_entrypoints=False).encoders.names(),
        "names": host.encoders.names(),
        "image_owner": [image.plugin, image.distribution],
        "failed": [dataclasses.asdict(f) for f in host.failed_plugins],
        "still_registered": [n for n in ["broken_import", "broken_register", "misspelled_hook",
                                         "duplicate_image", "dup_b"] if host.pm.has_plugin(n)],
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
    plugins = {**BROKEN_PLUGINS, GOOD_PLUGIN[0]: GOOD_PLUGIN[1:], FORGOT_HOOKIMPL[0]: FORGOT_HOOKIMPL[1:]}
    sources = [_write_distribution(root / "src" / dist, dist, ep, src) for dist, (ep, src) in plugins.items()]
    site = root / "site"
    pip_install_target(sources, site)
    report = run_json(BROKEN_SCRIPT, site, str(root))
    cli = {flags: run_python(["-m", "mmassist.core", "plugins", *flags.split()], site)
           for flags in ("", "--strict", "-v")}
    report["cli"] = {flags: {"rc": done.returncode, "out": done.stdout} for flags, done in cli.items()}
    return report


def test_a_plugin_that_registers_nothing_is_a_warning(broken_report):
    [warning] = broken_report["warnings"]
    assert "forgot_hookimpl (mmassist-forgot-hookimpl 0.0.1) registers nothing" in warning
    assert "register_encoders without @hookimpl" in warning
    assert "registers nothing" in broken_report["cli"][""]["out"]


def test_a_failing_route_input_is_its_plugins_failure_not_everyones(broken_report):
    assert broken_report["routed"] == ["image/timm", "image/timm"]
    routes = [f for f in broken_report["failed"] if f["stage"] == "route"]
    assert sorted(f["name"] for f in routes) == ["bad_router", "raising_router"]  # once each


def test_two_plugins_with_one_name_resolve_by_distribution_name(broken_report):
    assert broken_report["dup_owner"] == "mmassist-dup-a"


def test_failed_plugins_keep_their_traceback(broken_report):
    tracebacks = {f["name"]: f["traceback"] for f in broken_report["failed"]}
    assert 'mmassist_broken_import.py", line 1' in tracebacks["broken_import"]
    assert "raise RuntimeError" in tracebacks["broken_import"]
    assert 'mmassist_raising_router.py", line 5, in route_input' in tracebacks["raising_router"]
    assert "host.py" not in tracebacks["broken_import"]  # the plugin's frames, not ours
    verbose = broken_report["cli"]["-v"]["out"]
    assert 'mmassist_broken_import.py", line 1' in verbose
    assert 'mmassist_broken_import.py"' not in broken_report["cli"][""]["out"]


def test_plugins_strict_fails_when_a_plugin_failed(broken_report):
    assert broken_report["cli"][""]["rc"] == 0
    assert broken_report["cli"]["--strict"]["rc"] == 1


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
