"""Real DeepSpeed ZeRO-1 on CPU: 2 processes over gloo fit, checkpoint, resume, validate, and convert the ZeRO
checkpoint to one fp32 state dict with Lightning's (DeepSpeed's) utility.

Every DeepSpeed run happens in its own subprocess (``python tests/training/test_strategy.py ...``): in one pytest
process, a 2-device run after a 1-device one silently ran with world size 1. Lightning launches the second rank by
re-running the same command line. The worker is the ``__main__`` block of this file.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from panda.training.strategy import CPUDeepSpeedStrategy

ROOT = Path(__file__).resolve().parents[2]
STEPS, RESUMED_STEPS = 6, 4


def run_worker(*args: str, timeout: float = 420) -> None:
    """Run this file's ``__main__`` worker in a fresh interpreter; fail with its output if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"worker {args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def test_lightning_still_refuses_deepspeed_on_cpu():
    """If this fails, Lightning now runs DeepSpeed on CPU by itself: CPUDeepSpeedStrategy may be obsolete."""
    from lightning.pytorch.accelerators import CPUAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(stage=1)
    strategy.accelerator = CPUAccelerator()
    with pytest.raises(RuntimeError, match="only supported on CUDA GPUs"):
        strategy.setup_environment()


@pytest.mark.parametrize("method, expected", [
    ("setup_environment", "CUDAAccelerator"),
    ("setup_distributed", "_validate_device_index_selection(self.parallel_devices)"),
    ("_setup_model_and_optimizer", "device_rank=self.root_device.index"),
    ("_initialize_deepspeed_inference", "device_rank=self.root_device.index"),
])
def test_the_bypassed_lightning_code_is_unchanged(method, expected):
    """CPUDeepSpeedStrategy wraps these private methods; an upgrade that moves the checks must be noticed here."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    source = inspect.getsource(getattr(DeepSpeedStrategy, method))
    assert expected in source, (
        f"lightning's DeepSpeedStrategy.{method} no longer contains {expected!r}: the CPU bypass in "
        "panda/training/strategy.py must be re-checked against this Lightning version"
    )
    assert method in vars(CPUDeepSpeedStrategy)


def test_nothing_is_bypassed_on_gpus():
    """With a CUDA accelerator the device list is left exactly as Lightning built it."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    strategy = CPUDeepSpeedStrategy(stage=1)
    strategy.parallel_devices = [torch.device("cuda", 0), torch.device("cuda", 1)]
    strategy.accelerator = CUDAAccelerator()
    with strategy._indexed_cpu_devices():
        assert strategy.parallel_devices == [torch.device("cuda", 0), torch.device("cuda", 1)]
    strategy.parallel_devices = [torch.device("cpu"), torch.device("cpu")]
    strategy.accelerator = CPUAccelerator()
    with strategy._indexed_cpu_devices():
        assert strategy.parallel_devices == [torch.device("cpu", 0), torch.device("cpu", 1)]
    assert strategy.parallel_devices == [torch.device("cpu"), torch.device("cpu")]


def test_two_process_zero1_fit_checkpoint_resume_and_fp32_conversion(tmp_path):
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    run_worker("fit", str(tmp_path / "first"))
    facts = [json.loads((tmp_path / "first" / f"facts-rank{r}.json").read_text()) for r in (0, 1)]
    for rank, fact in enumerate(facts):
        assert fact["world_size"] == 2 and fact["global_rank"] == rank
        assert fact["global_step"] == STEPS
        # ZeRO-1: each rank holds the fp32 master weights (and Adam moments) of its half only
        assert fact["partition_numel"] < fact["param_numel"]
        assert fact["partition_numel"] * 2 >= fact["param_numel"]
    checkpoint = tmp_path / "first" / "final.ckpt"
    shards = sorted(p.name for p in (checkpoint / "checkpoint").glob("*optim_states.pt"))
    assert shards == [f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]  # one shard per rank

    run_worker("fit", str(tmp_path / "resumed"), "--resume", str(checkpoint))
    resumed = [json.loads((tmp_path / "resumed" / f"facts-rank{r}.json").read_text()) for r in (0, 1)]
    assert [f["global_step"] for f in resumed] == [STEPS + RESUMED_STEPS] * 2
    assert resumed[0]["first_step"] == STEPS  # continued, not restarted
    assert resumed[0]["adam_step"] == STEPS + RESUMED_STEPS  # optimizer moments came back with the weights
    assert resumed[0]["val_loss"] == resumed[1]["val_loss"] > 0

    fp32_file = tmp_path / "model_fp32.ckpt"
    convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint), str(fp32_file))
    state_dict = torch.load(fp32_file, map_location="cpu", weights_only=False)["state_dict"]
    live = torch.load(tmp_path / "first" / "bf16_weights.pt")
    assert set(state_dict) == set(live)
    for name, weight in state_dict.items():
        assert weight.dtype == torch.float32
        assert torch.equal(weight.to(torch.bfloat16), live[name]), name  # bf16 weights are the fp32 masters, cast


# ---------------------------------------------------------------------------------------------------------------
# The worker: a tiny LLaMA on fixed random tokens, `CPUDeepSpeedStrategy(stage=1)`, 2 CPU processes, bf16-mixed.

def _worker(out_dir: Path, resume: str | None) -> None:
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)

    class TinyLM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = LlamaForCausalLM(LlamaConfig(
                vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, max_position_embeddings=64))
            self.first_step: int | None = None

        def training_step(self, batch, batch_idx):
            if self.first_step is None:
                self.first_step = self.trainer.global_step
            (input_ids,) = batch
            return self.model(input_ids=input_ids, labels=input_ids).loss

        def validation_step(self, batch, batch_idx):
            (input_ids,) = batch
            self.log("val_loss", self.model(input_ids=input_ids, labels=input_ids).loss, sync_dist=True)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    L.seed_everything(0, verbose=False)
    tokens = torch.randint(0, 96, (64, 16), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(tokens), batch_size=2)
    module = TinyLM()
    total_steps = STEPS + (RESUMED_STEPS if resume else 0)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=CPUDeepSpeedStrategy(stage=1), precision="bf16-mixed",
        max_steps=total_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out_dir,
    )
    trainer.fit(module, loader, ckpt_path=resume)

    engine = trainer.strategy.deepspeed_engine
    partitions = engine.optimizer.single_partition_of_fp32_groups
    adam_state = engine.optimizer.optimizer.state[partitions[0]]
    facts = {
        "world_size": trainer.world_size, "global_rank": trainer.global_rank, "global_step": trainer.global_step,
        "first_step": module.first_step, "adam_step": int(adam_state["step"]),
        "partition_numel": sum(p.numel() for p in partitions),
        "param_numel": sum(p.numel() for p in module.parameters()),
    }
    trainer.save_checkpoint(out_dir / "final.ckpt")
    if resume:  # `validate` builds DeepSpeed's inference engine: the third bypassed check's other call site
        facts["val_loss"] = trainer.validate(module, DataLoader(TensorDataset(tokens[:8]), batch_size=2),
                                             verbose=False)[0]["val_loss"]
    if trainer.is_global_zero:
        torch.save({f"model.{k}": v.clone() for k, v in module.model.state_dict().items()}, out_dir / "bf16_weights.pt")
    (out_dir / f"facts-rank{trainer.global_rank}.json").write_text(json.dumps(facts))


if __name__ == "__main__":
    _, command, out, *rest = sys.argv
    assert command == "fit"
    Path(out).mkdir(parents=True, exist_ok=True)
    _worker(Path(out), rest[1] if rest[:1] == ["--resume"] else None)
