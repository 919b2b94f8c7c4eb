import json

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from panda.eval import evaluate
from panda.eval.callback import PeriodicEvaluation


class FrozenLM(LightningModule):
    """A training module holding a Hugging Face model at ``.model`` (as PandaLM does); lr 0 keeps weights fixed."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.modes = []

    def training_step(self, batch, batch_idx):
        self.modes.append(self.model.training)
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randint(4, 100, (4, 8)), batch_size=2)


def test_periodic_evaluation_during_fit_uses_the_evaluator_code(tmp_path, tiny_model, tiny_model_dir,
                                                                tokenizer_dir, c3_file):
    callback = PeriodicEvaluation(str(c3_file), "c3", str(tokenizer_dir), every_n_steps=2, protocol="both",
                                  max_new_tokens=4)
    module = FrozenLM(tiny_model.train())
    trainer = Trainer(max_steps=4, callbacks=[callback], logger=TensorBoardLogger(tmp_path, name="fit"),
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module)
    assert [h["step"] for h in callback.history] == [2, 4]
    assert module.modes == [True] * 4  # back in training mode after each evaluation
    written = json.loads((tmp_path / "fit" / "version_0" / "eval" / "c3" / "step_4" / "metrics.json").read_text())
    assert written["count"] == 3 and written["step"] == 4
    standalone = evaluate(str(tiny_model_dir), str(c3_file), "c3", "both", max_new_tokens=4,
                          output_dir=str(tmp_path / "runs"))
    for key in ("generate/acc", "generate/unparseable_rate", "loglik/acc", "loglik/acc_norm", "count"):
        assert callback.history[-1][key] == standalone[key]


def test_progress_bar_only_on_rank_zero_in_a_terminal(monkeypatch):
    from panda.eval.callback import progress

    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert not progress(3, "eval", rank_zero=True).disable
    assert progress(3, "eval", rank_zero=False).disable
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert progress(3, "eval", rank_zero=True).disable  # logs and CI stay quiet
