"""``PandaLM``: the LightningModule that trains a LLaMA on BATCH CONTRACT batches.

The masked causal-LM loss is computed here, from the batch, rather than by passing ``labels`` to the Hugging Face
model: the module needs the per-token losses anyway (loss per corpus source, the NaN guard naming the sources), and
it must shift exactly once. Labels arrive *unshifted* (``labels[t]`` is ``input_ids[t]`` where that token is
trained), so the logits at ``t`` predict ``labels[t + 1]``::

    position t     0    1    2    3    4    5
    input_ids      BOS  p1   p2   r1   r2   EOS        (p = prompt, r = response)
    labels         -    -    -    r1   r2   EOS        (- = IGNORE_INDEX)
    logits[t] →    p1   p2   r1   r2   EOS  ·          (predicts labels[t + 1]; the last position is dropped)
    trained?       no   no   yes  yes  yes  ·

The loss of a micro-batch is the mean over its trained tokens (so under gradient accumulation every micro-batch
weighs the same, as in the reference; packing keeps their token counts close); ``val/loss`` is the token-weighted mean over the
whole validation set (torchmetrics, synced across ranks) and ``val/ppl`` its exponential.

The Hugging Face model lives at ``self.model`` so checkpoint keys read ``model.<hf key>`` (with LoRA,
``model.base_model.model.<hf key>`` — peft's wrapping).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ThroughputMonitor
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from panda.constants import IGNORE_INDEX
from panda.data.chat_format import CHAT_FORMAT_KEY, ChatFormat
from panda.model.attention import AttnImplementation, describe, packed_forward_kwargs, \
    resolve_attn_implementation, scores_dtype
from panda.model.lora import LoraSettings, Trainable, add_lora, merged_copy, quantized_load_kwargs, \
    train_embeddings_only, trainable_state_dict
from panda.training.guards import NonFiniteGuard, warn_about_precision
from panda.training.monitor import PandaThroughputMonitor, training_flops_per_token, useful_tokens
from panda.training.schedule import LRSchedule, SchedulePlan, build_scheduler, plan_schedule

LOSS_CHUNK_TOKENS = 2048
"""Tokens whose logits are computed at once in the training loss: one chunk's fp32 (N, V) logits and their gradient
are all that exists of the output layer's activations (at 7B: 2048 × 32001 × 4 B = 262 MB, not ≈1 GB per
micro-batch of 4 × 2048 tokens for the logits alone)."""


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` labels → ``(B, T)`` targets: ``targets[t] = labels[t + 1]``, ``IGNORE_INDEX`` at the last position.

    Shifting the (B, T) labels instead of the (B, T, V) logits means no slice of the logits is ever copied.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)


def causal_lm_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy of next-token prediction from full logits, and which positions count.

    The reference form (evaluation, distillation, tests); training uses :func:`chunked_causal_lm_losses`, which
    never holds the full logits.

    Args:
        logits: ``(B, T, V)`` model output.
        labels: ``(B, T)`` unshifted labels, ``IGNORE_INDEX`` where no loss is wanted.

    Returns:
        ``(B, T - 1)`` losses (0 where ignored) and the ``(B, T - 1)`` boolean mask of trained positions; position
        ``t`` is the prediction of token ``t + 1``.
    """
    targets = next_token_targets(labels)  # (B, T)
    # flattened (N, V) rows: ~40 % faster on CPU than cross_entropy over a transposed (B, V, T) view
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)  # (B, T)
    return losses[:, :-1], targets[:, :-1] != IGNORE_INDEX


class _TokenNLL(torch.autograd.Function):
    """``cross_entropy(logits, targets, reduction="none")`` for rows that all have a target, with a leaner backward.

    PyTorch's backward of ``nll_loss`` writes a dense zero (N, V) gradient with one non-zero per row, and
    ``log_softmax``'s backward then makes another full pass over it; here the gradient is built in one pass from
    the saved log-probabilities, ``softmax · g − onehot · g`` (exp in place, then a scatter). Same loss, gradients
    equal to rounding. The backward consumes its saved tensor, so a second backward through the same graph fails
    loudly (PyTorch's in-place check); inside the loss's checkpointing every backward recomputes it anyway.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logprobs = torch.log_softmax(logits, dim=-1)  # (N, V)
        ctx.save_for_backward(logprobs, targets)
        return -logprobs.gather(-1, targets[:, None]).squeeze(-1)  # (N,)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logprobs, targets = ctx.saved_tensors
        grad_logits = logprobs.exp_().mul_(grad[:, None])  # the saved tensor is not read again: reuse it
        return grad_logits.scatter_add_(-1, targets[:, None], -grad[:, None]), None


def _chunk_losses(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _TokenNLL.apply(head(hidden).float(), targets)  # (N,): (N, V) logits live only here


def chunked_causal_lm_losses(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                             chunk_tokens: int = LOSS_CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`causal_lm_losses` from the last hidden states, computing the output layer a chunk at a time.

    Only positions that are trained get logits at all (a masked prompt or the padding costs nothing). Each chunk's
    logits are recomputed in backward (non-reentrant checkpointing through ``head``, so DeepSpeed ZeRO-3's and
    peft's module hooks still run), so the fp32 ``(B, T, V)`` logits and their gradient never exist: the price is
    one more output-layer forward per trained token.

    Args:
        hidden: ``(B, T, C)`` final hidden states (after the last norm).
        head: The output projection (``lm_head``).
        labels: ``(B, T)`` unshifted labels.
        chunk_tokens: Tokens per chunk.

    Returns:
        As :func:`causal_lm_losses`: ``(B, T - 1)`` losses (0 where ignored) and the mask of trained positions.
    """
    from torch.utils.checkpoint import checkpoint

    targets = next_token_targets(labels)  # (B, T)
    trained = targets != IGNORE_INDEX
    index = trained.view(-1).nonzero().squeeze(1)  # (N,) trained positions of the flattened batch
    states = hidden.reshape(-1, hidden.size(-1)).index_select(0, index)  # (N, C)
    wanted = targets.view(-1).index_select(0, index)  # (N,)
    pieces = [checkpoint(_chunk_losses, head, h, t, use_reentrant=False) if torch.is_grad_enabled()
              else _chunk_losses(head, h, t)
              for h, t in zip(states.split(chunk_tokens), wanted.split(chunk_tokens))]
    kept = torch.cat(pieces) if pieces else states.float().sum(-1)  # (0,), still part of the graph
    losses = kept.new_zeros(targets.numel()).index_put((index,), kept).view_as(targets)  # (B, T)
    return losses[:, :-1], trained[:, :-1]


def loss_by_source(losses: torch.Tensor, trained: torch.Tensor, source_ids: torch.Tensor,
                   num_sources: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of losses and count of trained tokens per source.

    Args:
        losses: ``(B, T-1)`` per-position losses from :func:`causal_lm_losses` (or its chunked form).
        trained: ``(B, T-1)`` mask of trained positions.
        source_ids: ``(B, T)`` source index per token (``-1`` on padding); a prediction belongs to the source of
            the token it predicts.
        num_sources: Number of sources (length of the data module's ``source_names``).

    Returns:
        ``(num_sources,)`` loss sums and ``(num_sources,)`` token counts.
    """
    sources = source_ids[:, 1:]  # (B, T-1)
    keep = trained & (sources >= 0) & (sources < num_sources)
    index, kept = sources[keep], losses[keep]
    sums = torch.zeros(num_sources, dtype=losses.dtype, device=losses.device).index_add_(0, index, kept)
    counts = torch.zeros(num_sources, dtype=losses.dtype, device=losses.device).index_add_(
        0, index, torch.ones_like(kept))
    return sums, counts


class PandaLM(LightningModule):
    """A LLaMA (``transformers.LlamaForCausalLM``) trained with the masked causal-LM loss.

    Args:
        pretrained: A ``save_pretrained`` directory to start from (LLaMA, Panda-7B, a previous run's export).
        config: ``LlamaConfig`` keyword arguments to build a model from scratch (the demo and tests) when
            ``pretrained`` is not given.
        optimizer: The optimizer, e.g. ``class_path: torch.optim.AdamW`` with its ``init_args`` in YAML; its ``lr``
            is the peak learning rate.
        lr_schedule: Decay after warmup: ``linear`` (the reference), ``cosine`` or ``constant``.
        warmup_fraction: Share of the optimizer steps spent in linear warmup (Panda: 0.01).
        warmup_steps: Warmup as a number of optimizer steps instead of a share (the reference's Flan-LLaMA and
            LLaMA-2 configs: 100 and 500); ``None`` uses ``warmup_fraction``.
        activation_checkpointing: Recompute each decoder layer's activations in backward (non-reentrant), trading
            ~30 % more compute for memory that no longer grows with the number of layers.
        attn_implementation: How packed documents are kept apart (see :mod:`panda.model.attention`): ``auto``
            picks the fastest exact path for the device when the run starts (``document_sdpa`` on CPU, a flash
            varlen kernel on a GPU in bf16/fp16) and logs it; ``sdpa``/``eager`` use a dense mask.
        load_dtype: Dtype of the weights as loaded/built; ``bfloat16`` halves host memory for 7B+ models under a
            bf16 DeepSpeed strategy (which keeps fp32 master weights in the optimizer); keep ``float32`` otherwise.
        lora: LoRA adapters to train instead of the full model; ``None`` trains without adapters.
        trainable: ``all`` parameters, or only ``embeddings`` (``embed_tokens`` and ``lm_head``: the stage right
            after a vocabulary extension).
        monitor_throughput: Add Lightning's ``ThroughputMonitor`` (useful tokens/s, MFU) and a learning-rate
            monitor when none is configured.
        tokenizer_dir: The data's tokenizer directory, checked against the embedding size at start and kept in the
            checkpoint (export finds it there).
        max_seq_length: The data's row length (sizes the attention term of the MFU estimate).
        source_names: The data's source names, in the order of the batches' ``source_ids`` (per-source losses).
        chat_format: How the data renders prompts and conversations
            (:func:`panda.data.chat_format.training_chat_format`, as a dict); stored with every checkpoint so that
            generate, chat and export prompt the model as it was trained.

    The last four describe the data, not the model: ``panda fit`` fills them from the data module
    (``link_arguments`` in :mod:`panda.cli`); give them yourself when you build a ``PandaLM`` in Python.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: LRSchedule = "linear",
        warmup_fraction: float = 0.01,
        warmup_steps: int | None = None,
        activation_checkpointing: bool = False,
        attn_implementation: AttnImplementation = "auto",
        load_dtype: Literal["float32", "bfloat16"] = "float32",
        lora: LoraSettings | None = None,
        trainable: Trainable = "all",
        monitor_throughput: bool = True,
        tokenizer_dir: str | None = None,
        max_seq_length: int | None = None,
        source_names: list[str] | None = None,
        chat_format: dict | None = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):  # as stored in a checkpoint's hyperparameters
            lora = LoraSettings(**lora)
        self.save_hyperparameters(ignore=["optimizer", "lora"])
        self.hparams["lora"] = asdict(lora) if lora is not None else None  # plain types: weights_only loading
        if lora is not None and trainable != "all":
            raise ValueError("model.lora and model.trainable=embeddings exclude each other; to train the embeddings "
                             "beside adapters list them in model.lora.modules_to_save")
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction
        self.warmup_steps = warmup_steps
        self.lora = lora
        self.trainable = trainable
        self.monitor_throughput = monitor_throughput

        if attn_implementation == "flash_attention_2":
            resolve_attn_implementation(attn_implementation, "cuda", "bf16-mixed")  # a missing package, named now
        build_with = resolve_attn_implementation(attn_implementation, "cpu") if attn_implementation == "auto" \
            else attn_implementation  # a CUDA-only kernel is checked against the device in setup()
        self.attn_implementation = build_with
        model = build_llama(pretrained, config, build_with, getattr(torch, load_dtype), **quantized_load_kwargs(lora))
        model.config.use_cache = False
        if activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if trainable == "embeddings":
            train_embeddings_only(model)
        self.model = add_lora(model, lora) if lora is not None else model
        if lora is not None and lora.save_adapters_only:
            self.strict_loading = False  # checkpoints hold the adapters; the frozen body comes from `pretrained`

        self.source_names = list(source_names or [])
        self.chat_format = ChatFormat.from_stored(chat_format) if chat_format else None
        self.schedule_plan: SchedulePlan | None = None
        self.flops_per_token = self.forward_flops_per_token = 0
        self._last_batch: tuple[int, dict[str, torch.Tensor]] | None = None  # (FLOPs per token, batch)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_source_loss = torch.nn.ModuleList(MeanMetric() for _ in self.source_names)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The Hugging Face model being trained (under peft's wrapper when LoRA is on)."""
        return self.model.get_base_model() if self.lora is not None else self.model

    def merged_hf_model(self) -> PreTrainedModel:
        """A standalone ``LlamaForCausalLM`` with any LoRA adapters merged, ready for ``save_pretrained``."""
        return merged_copy(self.model)

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        check_vocabulary(self.hf_model, self.hparams.tokenizer_dir)
        warn_about_precision(str(self.trainer.precision), self.trainer.strategy.root_device.type)
        if self.hparams.load_dtype == "bfloat16" and not isinstance(self.trainer.strategy, DeepSpeedStrategy) \
                and self.trainer.precision != "bf16-true":
            rank_zero_warn("model.load_dtype=bfloat16 without a DeepSpeed strategy: the optimizer updates bf16 "
                           "weights directly (no fp32 master copy); use float32 or a DeepSpeed strategy")
        self.flops_per_token, self.forward_flops_per_token = self._flops_per_token()
        self._choose_attention()

    def _choose_attention(self) -> None:
        """Resolve ``attn_implementation`` for the device and precision the run uses, and say which path runs."""
        device, precision = self.trainer.strategy.root_device.type, str(self.trainer.precision)
        chosen = resolve_attn_implementation(self.hparams.attn_implementation, device, precision)
        if chosen != self.hf_model.config._attn_implementation:
            self.hf_model.set_attn_implementation(chosen)
        self.attn_implementation = chosen
        rank_zero_info(f"attention: {chosen} — {describe(chosen)} (model.attn_implementation="
                       f"{self.hparams.attn_implementation}, {device}, precision {precision})")

    def configure_callbacks(self):
        present = {type(c) for c in self.trainer.callbacks}
        callbacks = [] if any(issubclass(t, NonFiniteGuard) for t in present) else [NonFiniteGuard()]
        if not self.monitor_throughput:
            return callbacks
        if not any(issubclass(t, ThroughputMonitor) for t in present):
            callbacks.append(PandaThroughputMonitor())
        if self.trainer.loggers and not any(issubclass(t, LearningRateMonitor) for t in present):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        return callbacks

    def configure_optimizers(self):
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer(parameters)
        self.schedule_plan = plan_schedule(self.trainer.estimated_stepping_batches, self.warmup_fraction,
                                           warmup_steps=self.warmup_steps)
        world = self.trainer.world_size
        accumulation = self.trainer.accumulate_grad_batches
        rank_zero_info(
            f"{self.schedule_plan.describe()} ({self.lr_schedule} decay; world size {world}, gradient accumulation "
            f"{accumulation}, {sum(p.numel() for p in parameters):,} trainable parameters)"
        )
        scheduler = build_scheduler(optimizer, self.lr_schedule, self.schedule_plan)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------- loss
    def _model_kwargs(self, batch: dict[str, torch.Tensor]) -> dict:
        dtype = scores_dtype(self.hf_model.get_input_embeddings().weight.dtype, batch["input_ids"].device.type)
        return {**packed_forward_kwargs(batch, self.attn_implementation, dtype=dtype), "use_cache": False}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, T, V)`` of a BATCH CONTRACT batch, documents of a packed row kept apart."""
        return self.model(**self._model_kwargs(batch)).logits

    def _losses(self, batch: dict[str, torch.Tensor]):
        """Mean loss over trained tokens, per-position losses, their mask and count — without full logits."""
        model = self.hf_model  # the decoder and the head; with LoRA the adapters are injected in both
        hidden = model.model(**self._model_kwargs(batch)).last_hidden_state  # (B, T, C)
        losses, trained = chunked_causal_lm_losses(hidden, model.get_output_embeddings(), batch["labels"])
        count = trained.sum()
        loss = losses.sum() / count.clamp(min=1)
        return loss, losses, trained, count

    def _sources_of(self, batch: dict[str, torch.Tensor]) -> list[str]:
        if "source_ids" not in batch:
            return []
        present = torch.unique(batch["source_ids"]).tolist()
        return [self.source_names[i] if i < len(self.source_names) else f"source {i}" for i in present if i >= 0]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, losses, trained, count = self._losses(batch)
        rows = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=rows)
        self.log("train/ppl", torch.exp(loss.detach()), batch_size=rows)
        if self.source_names and "source_ids" in batch:
            sums, counts = loss_by_source(losses.detach(), trained, batch["source_ids"], len(self.source_names))
            for name, total, n in zip(self.source_names, sums, counts):
                if n > 0:
                    self.log(f"train/loss/{name}", total / n, batch_size=rows)
        self._last_batch = (self.flops_per_token, batch)
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], metric: MeanMetric, per_source: bool) -> None:
        loss, losses, trained, count = self._losses(batch)
        metric.update(loss, weight=count)
        if per_source and len(self.val_source_loss) and "source_ids" in batch:
            sums, counts = loss_by_source(losses, trained, batch["source_ids"], len(self.source_names))
            for source_metric, total, n in zip(self.val_source_loss, sums, counts):
                source_metric.update(total / n.clamp(min=1), weight=n)
        self._last_batch = (self.forward_flops_per_token, batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, per_source=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, per_source=False)

    def _log_epoch(self, stage: str, metric: MeanMetric) -> None:
        if metric.update_count == 0:
            return
        loss = metric.compute()
        self.log(f"{stage}/loss", loss, sync_dist=True)
        self.log(f"{stage}/ppl", torch.exp(loss), sync_dist=True)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_loss)
        for name, metric in zip(self.source_names, self.val_source_loss):
            if metric.update_count and float(metric.weight) > 0:
                self.log(f"val/loss/{name}", metric.compute(), sync_dist=True)
            metric.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss)

    # ------------------------------------------------------------------------------------------- monitoring
    @property
    def flops_per_batch(self) -> int:
        """Model FLOPs of the last batch on its useful tokens (read by ``ThroughputMonitor``; counted only when read,
        so a run without the monitor does not count tokens on every step)."""
        if self._last_batch is None:
            return 0
        per_token, batch = self._last_batch
        return per_token * useful_tokens(batch)

    def _flops_per_token(self) -> tuple[int, int]:
        """Model FLOPs per token of a training step and of a forward pass alone."""
        model = self.hf_model
        embedding = model.get_input_embeddings().weight
        params = [p for p in self.model.parameters() if p is not embedding]
        config = model.config
        context = int(self.hparams.max_seq_length or config.max_position_embeddings)
        num_params = sum(p.numel() for p in params)
        attention = 4 * config.num_hidden_layers * config.hidden_size * context
        train = training_flops_per_token(
            num_params=num_params, num_trainable=sum(p.numel() for p in params if p.requires_grad),
            num_layers=config.num_hidden_layers, hidden_size=config.hidden_size, context=context,
        )
        return train, 2 * num_params + attention

    # ----------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.chat_format is not None:  # how prompts were rendered: generate, chat and export prompt the same way
            checkpoint[CHAT_FORMAT_KEY] = self.chat_format.as_dict()
        if self.lora is not None and self.lora.save_adapters_only and "state_dict" in checkpoint:
            checkpoint["state_dict"] = trainable_state_dict(self, checkpoint["state_dict"])


def build_llama(pretrained: str | None, config: dict | None, attn_implementation: str,
                dtype: torch.dtype, **load_kwargs) -> PreTrainedModel:
    """Load ``pretrained`` (a ``save_pretrained`` directory) or build a fresh model from ``config``
    (``load_kwargs``: QLoRA's quantisation, for ``pretrained`` only)."""
    if pretrained is not None:
        if not (Path(pretrained) / "config.json").is_file():
            raise FileNotFoundError(
                f"model.pretrained={pretrained!r}: expected a directory in save_pretrained layout (config.json and "
                "weights); replace the placeholder with your LLaMA / Panda checkpoint directory"
            )
        return AutoModelForCausalLM.from_pretrained(pretrained, attn_implementation=attn_implementation, dtype=dtype,
                                                    **load_kwargs)
    if load_kwargs:
        raise ValueError("model.lora.quantize needs model.pretrained: a 4-bit body is quantised while it loads")
    if config is None:
        raise ValueError("PandaLM needs model.pretrained (a model directory) or model.config (LlamaConfig arguments)")
    return AutoModelForCausalLM.from_config(LlamaConfig(**config), attn_implementation=attn_implementation,
                                            dtype=dtype)


def check_vocabulary(model: PreTrainedModel, tokenizer) -> None:
    """Fail early when the tokenizer (a directory or a loaded tokenizer) can emit ids that the model's embedding
    has no row for (:func:`panda.data.tokenizer.check_vocabulary`, the one check)."""
    from panda.data.tokenizer import check_vocabulary as check, load_tokenizer

    if tokenizer is None:
        return
    if isinstance(tokenizer, (str, Path)):
        from panda.data.paths import expand_path

        tokenizer = load_tokenizer(expand_path(str(tokenizer), "data.tokenizer"))
    rows = model.get_input_embeddings().weight.shape[0]
    check(rows, tokenizer, model="the model (model.pretrained / model.config)", tokenizer_name="data.tokenizer")
    if rows > len(tokenizer) + 1024:
        rank_zero_warn(f"the model has {rows} vocabulary rows for a {len(tokenizer)}-token tokenizer")


__all__ = ["PandaLM", "LoraSettings", "causal_lm_losses", "chunked_causal_lm_losses", "loss_by_source", "build_llama",
           "check_vocabulary"]
