"""The GGUF -> safetensors conversion cache: files follow the umask like every other output."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from refcal.backends import models


def _fake_convert(gguf, out):
    from safetensors.numpy import save_file

    out.mkdir()
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(out / "model.safetensors"))  # written 0600
    (out / "config.json").write_text("{}")


def _make_gguf(tmp):
    path = tmp / "m.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_converted_weights_follow_the_umask(umask, mode, monkeypatch):
    monkeypatch.setattr(models, "_convert", _fake_convert)
    old = os.umask(umask)
    try:
        target = models.converted_dir("tiny", "0" * 64, _make_gguf, "m.gguf")
    finally:
        os.umask(old)
    got = {p.name: stat.S_IMODE(p.stat().st_mode) for p in target.iterdir()}
    assert got["model.safetensors"] == mode, got
    assert set(got.values()) == {mode}
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask


def test_an_old_0600_conversion_is_repaired_on_use(monkeypatch):
    monkeypatch.setattr(models, "_convert", _fake_convert)
    old = os.umask(0o022)
    try:
        target = models.converted_dir("tiny", "1" * 64, _make_gguf, "m.gguf")
        os.chmod(target / "model.safetensors", 0o600)
        models.converted_dir("tiny", "1" * 64, _make_gguf, "m.gguf")
    finally:
        os.umask(old)
    assert stat.S_IMODE((target / "model.safetensors").stat().st_mode) == 0o644
