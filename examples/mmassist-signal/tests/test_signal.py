"""The plugin's own tests: the encoder contract, routing by declared file type, and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from mmassist import core
from mmassist.core.contract.testing import check_encoder

import mmassist_signal


@pytest.fixture(scope="module")
def host():
    return core.Host(load_entrypoints=False, plugins=[mmassist_signal])


def test_contract(host, tmp_path):
    out = check_encoder(host.encoders.get("signal/conv1d"), tmp_path, host=host)
    assert out.features.shape[-1] == 16


def test_declared_file_types_route_here(host, tmp_path):
    csv, npy = mmassist_signal.encoder.example_inputs(tmp_path)
    assert host.route(csv)[0].name == "signal/conv1d"
    assert host.route(npy)[0].name == "signal/conv1d"
    odd = tmp_path / "recording.dat"  # any name: the .npy magic bytes say what it is
    odd.write_bytes(npy.read_bytes())
    assert host.route(odd)[0].name == "signal/conv1d"


def test_bad_signals_are_clear_errors(host, tmp_path):
    encoder = host.encoders.get("signal/conv1d").create(mmassist_signal.tiny_config())
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,z\n1,2,oops\n")
    with pytest.raises(core.UndecodableInputError, match="bad.csv is not a readable signal"):
        encoder.encode([bad])
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((10, 5), dtype=np.float32))
    with pytest.raises(core.UndecodableInputError, match="5 channels"):
        encoder.encode([wide])
