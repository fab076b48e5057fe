"""Fuzz: mutated and truncated model files through the CLI. The contract: a documented exit
status (never 3, the internal-error status), no traceback, one error line, no partial output,
the input byte-identical afterwards. Bounded: a fixed number of seeded cases."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from bnfold.cli import main
from tests.builders import MODELS

SOURCE = (MODELS / "mobilenet_tiny.onnx").read_bytes()


def mutations(count: int, seed: int):
    rng = np.random.default_rng(seed)
    for index in range(count):
        data = bytearray(SOURCE)
        kind = index % 4
        if kind == 0:  # truncate
            yield f"truncate{index}", bytes(data[: int(rng.integers(1, len(data)))])
        elif kind == 1:  # flip a few bytes in the graph structure (the start of the file)
            for position in rng.integers(0, min(len(data), 4000), size=int(rng.integers(1, 6))):
                data[position] = int(rng.integers(0, 256))
            yield f"flip{index}", bytes(data)
        elif kind == 2:  # flip bytes anywhere
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
                data[position] ^= 1 << int(rng.integers(0, 8))
            yield f"bits{index}", bytes(data)
        else:  # splice a random block
            start = int(rng.integers(0, len(data) - 64))
            data[start : start + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
            yield f"splice{index}", bytes(data)


def run_in_process(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("seed", [0, 1])
def test_mutated_models_keep_the_failure_contract(tmp_path, capsys, seed):
    for name, payload in mutations(40, seed):
        source = tmp_path / f"{name}.onnx"
        source.write_bytes(payload)
        digest = hashlib.sha256(payload).hexdigest()
        out = tmp_path / f"{name}.out.onnx"
        status, stdout, stderr = run_in_process([str(source), "-o", str(out)], capsys)
        assert status in (0, 1, 2), (name, status, stderr)
        assert "Traceback" not in stderr, name
        if status == 2:
            assert len(stderr.strip().splitlines()) == 1, (name, stderr)
            assert str(source) in stderr
        if status != 0:
            assert not out.exists(), name
        if status == 1:
            assert "FAILED" in stdout, name
        assert hashlib.sha256(source.read_bytes()).hexdigest() == digest, name
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], name


def test_fuzz_through_the_real_console_command(tmp_path):
    for name, payload in list(mutations(6, 7)):
        source = tmp_path / f"{name}.onnx"
        source.write_bytes(payload)
        out = tmp_path / "o.onnx"
        proc = subprocess.run(
            [sys.executable, "-m", "bnfold", str(source), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, proc.stderr
        assert source.read_bytes() == payload
        out.unlink(missing_ok=True)
