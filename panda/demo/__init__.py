"""The embedded CPU demo: real Chinese text from PyPI packages, a tiny LLaMA, the whole pipeline in minutes."""
