"""Panda's data pipeline: sources → examples → tokens (+ loss mask) → packed rows → mixture → batches.

``PandaDataModule`` (the ``data:`` section of a training config) and ``CorpusSource`` (one entry of its
``sources``) are the public names; the data module is imported lazily so that light users of the package (the
readers, the tokenizer helpers) do not pay for importing Lightning.
"""

from panda.data.sources import CorpusSource

__all__ = ["CorpusSource", "PandaDataModule"]


def __getattr__(name: str):
    if name == "PandaDataModule":
        from panda.data.datamodule import PandaDataModule

        return PandaDataModule
    raise AttributeError(f"module 'panda.data' has no attribute {name!r}")
