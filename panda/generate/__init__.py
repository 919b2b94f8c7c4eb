"""Talk to a trained model: ``panda generate`` (a JSON-lines file of prompts) and ``panda chat`` (a terminal
session), both prompting in the chat format the model was trained with (:mod:`panda.data.chat_format`)."""

from panda.generate.engine import Reply, RequestError, Sampling, generate_all, generate_ids, request_ids

__all__ = ["Reply", "RequestError", "Sampling", "generate_all", "generate_ids", "request_ids"]
