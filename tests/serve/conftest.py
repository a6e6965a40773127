"""Fixtures of the proxy tests: a fitted calibrator, a fake upstream and a proxy on 127.0.0.1 in threads."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/api_server.py (FakeVLLM, LlamaServer)

from refcal import DACA  # noqa: E402
from refcal.serve import ServeConfig, create_app  # noqa: E402
from refcal.serve.fake_upstream import FakeUpstream, ServerThread  # noqa: E402
from refcal.synthetic import make_synthetic  # noqa: E402


@pytest.fixture(scope="session")
def cal_path(tmp_path_factory):
    d = make_synthetic(800, 4, seed=1)
    path = tmp_path_factory.mktemp("cal") / "calibrator.json"
    DACA().fit(d.base, d.chat).save(path)
    return path


@pytest.fixture(scope="session")
def upstream():
    with ServerThread(FakeUpstream(slow_s=3.0, drip_s=0.002)) as srv:
        yield srv


class Proxy:
    """A proxy app served in a thread, with a sync client."""

    def __init__(self, config: ServeConfig, **kwargs):
        self.app = create_app(config, **kwargs)
        self.server = ServerThread(self.app).start()
        self.url = self.server.url
        self.client = httpx.Client(base_url=self.url, timeout=30)

    @property
    def state(self):
        return self.app.state.proxy

    def close(self):
        self.client.close()
        self.server.stop()


@pytest.fixture
def make_proxy(upstream, cal_path, tmp_path):
    made = []

    def make(**kw):
        kw.setdefault("upstream", upstream.url + "/v1")
        kw.setdefault("calibrator", str(cal_path))
        kw.setdefault("log_dir", str(tmp_path / "log"))
        kw.setdefault("timeout", 1.0)
        extra = {k: kw.pop(k) for k in ("calibrator_obj", "reference") if k in kw}
        if "calibrator_obj" in extra:
            extra["calibrator"] = extra.pop("calibrator_obj")
        p = Proxy(ServeConfig(**kw), **extra)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
