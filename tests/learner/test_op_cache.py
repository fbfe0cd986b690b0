"""The learner builds DeepSpeed's comm op with this virtualenv's ninja, into this virtualenv's cache:
a system ninja of another version rebuilds what the pip one built (about 40 s a time)."""

import os
import shutil
import sys

from learner.engine import use_this_environments_op_cache


def test_the_virtualenvs_ninja_comes_first_once(monkeypatch):
    own_bin = os.path.join(sys.prefix, "bin")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    use_this_environments_op_cache()
    use_this_environments_op_cache()
    assert os.environ["PATH"] == f"{own_bin}:/usr/bin:/bin"
    assert os.environ["TORCH_EXTENSIONS_DIR"] == os.path.join(sys.prefix, "torch_extensions")
    assert shutil.which("ninja") == os.path.join(own_bin, "ninja")  # DeepSpeed's own dependency


def test_a_cache_the_user_chose_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    use_this_environments_op_cache()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
