"""The server stays lean: it loads without torch, and without its extra it names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pi0edge.errors import MissingExtraError


def test_the_serve_package_imports_without_torch_and_without_ray():
    code = ("import sys, pi0edge.serve.server, pi0edge.serve.map_file, pi0edge.serve.cli, pi0edge.serve.ray_app; "
            "loaded = {'torch', 'ray', 'fastapi'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_ray_serve_ray_names_the_ray_extra(monkeypatch):
    from pi0edge.serve import ray_app
    from pi0edge.serve.session import ServeConfig

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.serve", None)  # also when an earlier test imported Ray
    with pytest.raises(MissingExtraError, match=r"pip install 'pi0edge\[ray\]'"):
        ray_app.run(ray_app.PolicySource("bundle", obs_map=None), ServeConfig(), ray_app.RayConfig())


def test_without_msgpack_the_encoding_names_the_serve_extra(monkeypatch):
    from pi0edge.serve import msgpack_numpy

    monkeypatch.setitem(sys.modules, "msgpack", None)  # `import msgpack` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'pi0edge\[serve\]'"):
        msgpack_numpy.packb({"a": 1})
