"""The server stays lean: it loads without torch, and without its extra it names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pi0edge.errors import MissingExtraError


def test_the_serve_package_imports_without_torch():
    code = ("import sys, pi0edge.serve.server, pi0edge.serve.map_file, pi0edge.serve.cli; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_msgpack_the_encoding_names_the_serve_extra(monkeypatch):
    from pi0edge.serve import msgpack_numpy

    monkeypatch.setitem(sys.modules, "msgpack", None)  # `import msgpack` now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'pi0edge\[serve\]'"):
        msgpack_numpy.packb({"a": 1})
