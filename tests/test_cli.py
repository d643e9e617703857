import os
import re
import subprocess
import sys

import pytest

from keras_implicit import cli


def _demo(tmp_path, *extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, "-m", "keras_implicit.cli", "demo", "--export", str(tmp_path / "sm"), "--verbose", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_demo_trains_exports_and_reloads(tmp_path):
    out = _demo(tmp_path, "--epochs", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    acc = float(re.search(r"test accuracy: ([0-9.]+)", out.stdout).group(1))
    assert acc > 0.9
    assert "model: mondeq" in out.stdout
    assert "forward iterations" in out.stdout and "backward iterations" in out.stdout
    assert "-> agrees" in out.stdout
    assert (tmp_path / "sm" / "saved_model.pb").exists()


def _demo_in_process(tmp_path, capsys, *extra):
    """The other demos run in this process (the README's command, above, runs
    as a user types it): each fresh interpreter cost a TensorFlow import."""
    code = cli.main(["demo", "--export", str(tmp_path / "sm"), "--verbose", "0", *extra])
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_demo_fpi_model_on_mnist1d(tmp_path, capsys):
    code, out = _demo_in_process(tmp_path, capsys, "--dataset", "mnist1d", "--model", "fpi", "--epochs", "1")
    assert code == 0
    assert "mnist1d" in out and "-> agrees" in out


@pytest.mark.slow
def test_demo_lben_reports_certified_accuracy_and_reloads(tmp_path, capsys):
    code, out = _demo_in_process(tmp_path, capsys, "--model", "lben", "--lipschitz", "2", "--epochs", "3")
    assert code == 0
    acc = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    cert = [float(c) for c in re.findall(r"eps [0-9.]+: ([0-9.]+)", out)]
    # certified accuracy never exceeds accuracy and falls with the radius
    assert len(cert) == 3 and acc >= cert[0] >= cert[1] >= cert[2] and acc > 0.8
    assert "Lipschitz bound 2" in out and "-> agrees" in out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs must be >= 1. Received: --epochs=0"),
    (["--model", "lben", "--lipschitz", "0"], "--lipschitz must be > 0. Received: --lipschitz=0.0"),
])
def test_demo_rejects_bad_arguments(argv, message, capsys):
    # in this process: the arguments are checked before anything is trained
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
