from __future__ import annotations

import json
from pathlib import Path

import pytest

from nngraph_datasets.cli import main

pytest.importorskip("sklearn")


def test_fit_info_verify_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zoo"
    args = [
        "fit",
        "--source",
        "digits",
        "--out",
        str(out),
        "--limit",
        "20",
        "--steps",
        "3",
        "--compile",
        "no",
    ]
    assert main([*args, "--batch-size", "8", "--shard-size", "8"]) == 0
    err = capsys.readouterr().err
    assert "20/20 INRs" in err and "INR-steps/s" in err and "median PSNR" in err and "ETA" in err
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_inrs"] == 20 and info["psnr_db"]["median"] > 0 and info["recipe"]["steps"] == 3
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    png = tmp_path / "p.png"
    assert main(["show", str(out), "--out", str(png), "-n", "5", "--dilated"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing zoo is an error with a clear message, not a traceback
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_kernel_and_compile_together_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "zoo"
    args = ["fit", "--source", "digits", "--out", str(out), "--limit", "4", "--steps", "1"]
    assert main([*args, "--kernel", "eager", "--compile", "no"]) == 2
    assert "pass --kernel or --compile, not both" in capsys.readouterr().err
    assert not out.exists()


def test_verify_error_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a zoo" in capsys.readouterr().err
