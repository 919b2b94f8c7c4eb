"""Weight tools: verifiable deltas, checkpoint export to Hugging Face, Chinese vocabulary extension.

Run them as ``python -m panda.weights delta-make|delta-apply|export|extend-vocab`` (see ``__main__``).
"""
