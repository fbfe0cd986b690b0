"""`tidal status` / `tidal scale` --address: they join the cluster through its GCS (HOST:PORT), and the
dashboard URL that `tidal submit` takes is refused with a message saying which address to pass."""

from __future__ import annotations

import pytest
import ray

from cluster.cli import main


@pytest.mark.parametrize("command", [["status"], ["scale", "--rollout-workers", "2"]])
def test_the_dashboard_url_is_refused_naming_the_gcs_address_form(capsys, command):
    assert main([*command, "--address", "http://127.0.0.1:8299"]) == 1
    out, err = capsys.readouterr()
    assert not out
    assert err == ("tidal: --address http://127.0.0.1:8299 is a dashboard URL, which `tidal submit` takes; this "
                   "command joins the cluster itself: pass its GCS address HOST:PORT (`ray start --head` prints "
                   "it, port 6379 by default), or leave --address out on a node of the cluster ('auto')\n")
    assert not ray.is_initialized()  # refused before any attempt to join


def test_the_help_says_which_address(capsys):
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    assert "GCS address HOST:PORT" in " ".join(capsys.readouterr().out.split())
