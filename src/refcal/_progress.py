"""Progress bars of the libraries refcal drives (transformers, huggingface_hub): on or off for the process.

refcal's own bars follow ``progress=`` / ``--no-progress``; transformers and huggingface_hub draw their
own (weight loading, GGUF conversion, downloads) from process-wide switches. :func:`third_party_progress`
sets those switches: the environment variable that huggingface_hub reads when it is imported, and the
libraries' own functions when they are already imported. The CLI calls it for ``--no-progress``, as it
configures logging: a process-wide choice belongs to the program, not to a library call.
"""

from __future__ import annotations

import os
import sys


def third_party_progress(enabled: bool) -> None:
    """Turn the progress bars of transformers and huggingface_hub on or off for this process."""
    if enabled:
        os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    else:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hub = sys.modules.get("huggingface_hub")
    if hub is not None:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if enabled else disable_progress_bars)()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


__all__ = ["third_party_progress"]
