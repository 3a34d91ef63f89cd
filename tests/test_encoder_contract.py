"""One contract over every encoder the host finds: built-ins and any installed third-party plugin."""

from __future__ import annotations

import pytest

from mmassist import core
from mmassist.core.contract.testing import check_encoder

HOST = core.Host()


@pytest.mark.parametrize("name", HOST.encoders.names())
def test_encoder_contract(name, tmp_path):
    check_encoder(HOST.encoders.get(name), tmp_path, host=HOST)


def test_the_contract_catches_a_wrong_output_dim(tmp_path):
    import dataclasses

    from mmassist.plugins.image import TimmImageEncoder

    def lying_build(cfg):
        enc = TimmImageEncoder(cfg)
        enc.output_dim += 1
        return enc

    spec = dataclasses.replace(HOST.encoders.get("image/timm"), build=lying_build)
    with pytest.raises(AssertionError, match="output_dim"):
        check_encoder(spec, tmp_path)
