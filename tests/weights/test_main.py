import os
import subprocess
import sys

import torch

from panda.weights.__main__ import main
from panda.weights.shards import WeightReader
from tests.weights.conftest import write_weights


def weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=generator).to(torch.bfloat16),
            "lm_head.weight": torch.randn(10 + seed, 4, generator=generator).to(torch.bfloat16)}


def test_delta_commands_round_trip_and_report_a_wrong_base(tmp_path, capsys):
    write_weights(tmp_path / "base", weights(0))
    write_weights(tmp_path / "target", weights(1))
    assert main(["delta-make", str(tmp_path / "base"), str(tmp_path / "target"), str(tmp_path / "delta")]) == 0
    assert main(["delta-apply", str(tmp_path / "base"), str(tmp_path / "delta"), str(tmp_path / "out")]) == 0
    rebuilt = WeightReader(tmp_path / "out")
    for name, tensor in weights(1).items():
        assert torch.equal(rebuilt.get(name).view(torch.int16), tensor.view(torch.int16))

    write_weights(tmp_path / "other", weights(2) | {"lm_head.weight": weights(0)["lm_head.weight"]})
    assert main(["delta-apply", str(tmp_path / "other"), str(tmp_path / "delta"), str(tmp_path / "out2")]) == 1
    error = capsys.readouterr().err
    assert "tensor 'model.layers.0.mlp.up_proj.weight' is not the one this delta was made from" in error
    assert not (tmp_path / "out2").exists()


def test_module_runs_with_help_for_every_command():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "panda.weights", "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0
    for command in ("delta-make", "delta-apply", "export", "extend-vocab"):
        assert command in result.stdout
