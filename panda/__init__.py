"""Panda: continual pretraining and instruction tuning of LLaMA on Chinese corpora."""

import logging as _logging

# bitsandbytes' CPU backend (the optional `.[qlora]` extra) warns at import, in every command, that it could not fetch
# an optional kernel from the Hugging Face hub; Panda never downloads at run time and uses its built-in CPU kernels
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
