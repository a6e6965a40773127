"""Test isolation: never reach a model hub, never depend on the user's environment."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a real key in the developer's shell must never reach a test server or a log
os.environ.pop("OPENAI_API_KEY", None)
