"""Knowledge distillation: a frozen teacher's next-token distributions train the student beside the labels.

The reference listed distillation as "后续推出" (coming later) and never shipped it. Here it is one more training mode
of the same entry point and data pipeline: :class:`DistilledPandaLM` is a :class:`~panda.model.PandaLM` (same
packed batches, masks, optimizer, schedule, checkpoints) whose training loss is::

    loss = α · CE(student, labels) + (1 − α) · T² · KL(p_teacher^T ‖ p_student^T)

    p^T = softmax(logits / T)   at every *trained* position (label ≠ -100; prompts and padding take no part)

averaged over the trained tokens of the micro-batch, as the plain loss. ``T²`` keeps the KL term's gradients at the
CE term's scale when T changes (Hinton et al., 2015). Both models see the packed row with the same document-causal
attention, so a document's distribution never depends on its neighbours in the row.

The teacher (a LLaMA/Panda ``save_pretrained`` directory) is loaded frozen, in bf16 on GPUs, and kept *outside* the
module's parameters: it is not in the optimizer, not in checkpoints, and DeepSpeed never wraps it; each rank holds a
copy, as the student's replicated weights under ZeRO-1. Only the trained positions' logits exist, ``(N, V)`` in fp32
for both models (N trained tokens in the micro-batch).

**Offline teacher** (``teacher_cache``): a large teacher runs once. Before the first step each rank runs it over its
share of the training rows and stores, per trained position, the top-``top_k`` logits and their token ids in
memory-mapped ``.npy`` files under ``<teacher_cache>/<key>/`` — the key hashes the teacher directory (file names,
sizes, times), the training rows' data caches and ``top_k``, as the data cache's key does. Later runs (another α, T
or student, a resume) read it and never load the teacher. The KL then runs over the teacher's top-k, renormalised
(sparse distillation); with ``top_k`` = the vocabulary it equals the online loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from panda.constants import IGNORE_INDEX
from panda.errors import ConfigError
from panda.model.attention import packed_forward_kwargs, scores_dtype
from panda.model.module import PandaLM, loss_by_source, next_token_targets
from panda.training.guards import raise_if_not_finite

TeacherDtype = Literal["auto", "bfloat16", "float32"]


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    teacher_ids: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) per position at temperature ``temperature``.

    Args:
        student_logits: ``(N, V)`` student logits at the trained positions.
        teacher_logits: ``(N, V)`` teacher logits, or ``(N, K)`` of its top-k (then ``teacher_ids`` holds their
            ``(N, K)`` token ids and the teacher's distribution is renormalised over them).
        temperature: Softening temperature ``T > 0``.
        teacher_ids: Token ids of ``teacher_logits``' columns, ``None`` for the full vocabulary.

    Returns:
        ``(N,)`` KL divergences in nats.
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    if teacher_ids is not None:
        log_q = log_q.gather(1, teacher_ids.long())  # (N, K)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, V) or (N, K)
    return (log_p.exp() * (log_p - log_q)).sum(-1)  # (N,)


def check_teacher_dir(teacher: str) -> None:
    """Refuse a teacher directory that is not a model, in one line naming the key."""
    path = Path(teacher)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.init_args.teacher={teacher!r}: not a model directory (no config.json); expected a "
                          "LLaMA/Panda directory in save_pretrained layout")
    try:
        AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.init_args.teacher={teacher!r}: config.json is not a model config "
                          f"({str(error).splitlines()[0]})") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
        raise ConfigError(f"model.init_args.teacher={teacher!r}: no weights (*.safetensors or pytorch_model*.bin)")


def check_same_tokenizer(teacher: str, teacher_rows: int, student_rows: int, tokenizer, tokenizer_name: str) -> None:
    """Teacher and student must share the tokenizer (the distributions are compared id by id)."""
    from panda.data.tokenizer import load_tokenizer

    teacher_tokenizer = None
    if any((Path(teacher) / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        teacher_tokenizer = load_tokenizer(teacher, fill_pad=False)
    same = teacher_rows == student_rows and (
        teacher_tokenizer is None or tokenizer is None or teacher_tokenizer.get_vocab() == tokenizer.get_vocab())
    if not same:
        sizes = (f"{len(teacher_tokenizer) if teacher_tokenizer is not None else teacher_rows} tokens vs "
                 f"{len(tokenizer) if tokenizer is not None else student_rows}; embedding rows {teacher_rows} vs "
                 f"{student_rows}")
        raise ConfigError(f"model.init_args.teacher={teacher!r} and the student's {tokenizer_name} have different "
                          f"vocabularies ({sizes}); distillation compares token distributions id by id, so both "
                          "must use one tokenizer")


class DistilledPandaLM(PandaLM):
    """A :class:`~panda.model.PandaLM` student trained on labels and on a frozen teacher's distributions.

    Args:
        teacher: The teacher's ``save_pretrained`` directory (LLaMA, Panda-13B, ...), same tokenizer as the student.
        alpha: Weight of the cross-entropy on labels, in [0, 1]; ``1 − alpha`` weighs the distillation term.
        temperature: Softening temperature ``T > 0`` of both distributions in the KL term.
        teacher_dtype: ``auto`` loads the teacher in bf16 on GPUs and fp32 on CPU.
        teacher_cache: Directory for the offline teacher (its top-k logits cached once, see module docstring);
            ``None`` runs the teacher beside the student on every step.
        top_k: Logits per position the offline cache keeps.
        **kwargs: :class:`~panda.model.PandaLM`'s arguments (the student: ``pretrained`` or ``config``, optimizer,
            LoRA, ...).
    """

    def __init__(self, teacher: str, alpha: float = 0.5, temperature: float = 2.0,
                 teacher_dtype: TeacherDtype = "auto", teacher_cache: str | None = None, top_k: int = 64,
                 **kwargs) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"model.init_args.alpha={alpha}: expected a weight in [0, 1]")
        if not temperature > 0:
            raise ConfigError(f"model.init_args.temperature={temperature}: expected a temperature > 0")
        if top_k < 1:
            raise ConfigError(f"model.init_args.top_k={top_k}: expected at least 1 logit per position")
        check_teacher_dir(teacher)
        super().__init__(**kwargs)
        self.teacher_dir, self.alpha, self.temperature = teacher, alpha, temperature
        self.teacher_dtype, self.teacher_cache_dir, self.top_k = teacher_dtype, teacher_cache, top_k
        self._frozen: list[PreTrainedModel] = []  # the teacher, kept out of parameters, optimizer and checkpoints
        self._cache = None

    # ------------------------------------------------------------------------------------------------ teacher
    @property
    def teacher(self) -> PreTrainedModel:
        """The frozen teacher, loaded on first use and placed on this rank's device."""
        if not self._frozen:
            dtype = self.teacher_dtype
            if dtype == "auto":
                dtype = "bfloat16" if self.device.type == "cuda" else "float32"
            model = AutoModelForCausalLM.from_pretrained(self.teacher_dir, dtype=getattr(torch, dtype),
                                                         attn_implementation=self.attn_implementation)
            model.config.use_cache = False
            self._frozen.append(model.requires_grad_(False).eval())
            rank_zero_info(f"teacher {self.teacher_dir}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                           f"{dtype}, frozen")
        model = self._frozen[0]
        if model.device != self.device:
            model.to(self.device)
        return model

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if isinstance(tokenizer, (str, Path)):
            from panda.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        teacher_rows = int(AutoConfig.from_pretrained(self.teacher_dir).vocab_size)
        check_same_tokenizer(self.teacher_dir, teacher_rows, self.hf_model.get_input_embeddings().weight.shape[0],
                             tokenizer, "data.tokenizer")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.teacher_cache_dir is not None:
            from panda.model.teacher_cache import TeacherCache

            rows = self.trainer.datamodule.train_rows
            self._cache = TeacherCache.for_run(self.teacher_dir, rows, self.top_k, self.teacher_cache_dir)
            if not self._cache.complete():
                strategy = self.trainer.strategy
                self._cache.build(rows, self._teacher_top_k, batch_size=self.trainer.datamodule.batch_size,
                                  rank=strategy.global_rank, world_size=strategy.world_size, device=self.device)
                strategy.barrier("teacher_cache")
                self._frozen.clear()  # the student trains without the teacher in memory
            self._cache.open()

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """``(N, V)`` teacher logits at the flattened trained positions ``index`` of ``batch``."""
        teacher = self.teacher
        dtype = scores_dtype(teacher.get_input_embeddings().weight.dtype, batch["input_ids"].device.type)
        kwargs = packed_forward_kwargs(batch, self.attn_implementation, dtype=dtype)
        hidden = teacher.model(**kwargs, use_cache=False).last_hidden_state  # (B, T, C)
        states = hidden.reshape(-1, hidden.size(-1)).index_select(0, index)  # (N, C)
        return teacher.get_output_embeddings()(states).float()  # (N, V)

    def _teacher_top_k(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k teacher logits ``(N, K)``, their ids ``(N, K)`` and the trained positions per row ``(B,)``."""
        trained = next_token_targets(batch["labels"]) != IGNORE_INDEX  # (B, T)
        logits = self.teacher_logits(batch, trained.view(-1).nonzero().squeeze(1))
        values, ids = logits.topk(min(self.top_k, logits.size(-1)), dim=-1)
        return values, ids, trained.sum(1)

    # --------------------------------------------------------------------------------------------------- loss
    def distillation_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``loss``, ``ce_loss``, ``kd_loss`` (means over trained tokens), per-position CE ``(B, T-1)`` and its
        mask."""
        targets = next_token_targets(batch["labels"])  # (B, T)
        trained = targets != IGNORE_INDEX
        index = trained.view(-1).nonzero().squeeze(1)  # (N,)
        model = self.hf_model
        hidden = model.model(**self._model_kwargs(batch)).last_hidden_state  # (B, T, C)
        states = hidden.reshape(-1, hidden.size(-1)).index_select(0, index)  # (N, C)
        student = model.get_output_embeddings()(states).float()  # (N, V)
        ce = F.cross_entropy(student, targets.view(-1).index_select(0, index), reduction="none")  # (N,)
        if self._cache is not None:
            values, ids = self._cache.lookup(batch, trained, student.device)
            kl = distillation_kl(student, values, self.temperature, ids)
        else:
            kl = distillation_kl(student, self.teacher_logits(batch, index), self.temperature)
        count = index.numel()
        ce_loss, kd_loss = ce.sum() / max(count, 1), kl.sum() / max(count, 1)
        loss = self.alpha * ce_loss + (1 - self.alpha) * self.temperature ** 2 * kd_loss
        losses = ce.new_zeros(targets.numel()).index_put((index,), ce.detach()).view_as(targets)  # (B, T)
        return {"loss": loss, "ce_loss": ce_loss, "kd_loss": kd_loss, "losses": losses[:, :-1],
                "trained": trained[:, :-1]}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.distillation_losses(batch)
        loss = out["loss"]
        raise_if_not_finite(loss, step=self.global_step, epoch=self.current_epoch, batch_idx=batch_idx,
                            sources=lambda: self._sources_of(batch), strategy=self.trainer.strategy)
        rows = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=rows)
        self.log("train/ce_loss", out["ce_loss"], batch_size=rows)
        self.log("train/kd_loss", out["kd_loss"], prog_bar=True, batch_size=rows)
        self.log("train/ppl", torch.exp(out["ce_loss"].detach()), batch_size=rows)
        if self.source_names and "source_ids" in batch:
            sums, counts = loss_by_source(out["losses"], out["trained"], batch["source_ids"], len(self.source_names))
            for name, total, n in zip(self.source_names, sums, counts):
                if n > 0:
                    self.log(f"train/loss/{name}", total / n, batch_size=rows)
        self._last_batch = (self.flops_per_token, batch)
        return loss


__all__ = ["DistilledPandaLM", "distillation_kl", "check_teacher_dir", "check_same_tokenizer"]
