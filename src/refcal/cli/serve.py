"""``refcal serve``: the calibrating OpenAI-compatible proxy (:mod:`refcal.serve`)."""

from __future__ import annotations

from pathlib import Path

import click

_PATH = click.Path(path_type=Path)


@click.command()
@click.option("--upstream", required=True, help="The chat model's server, up to /v1 (e.g. http://127.0.0.1:8080/v1).")
@click.option("--calibrator", "cal_path", type=_PATH, required=True, help="calibrator.json from `refcal fit`.")
@click.option("--reference", default=None,
              help="Reference (base) model scored on a sample of calibrated requests: alias, folder, .gguf or openai:NAME.")
@click.option("--reference-api-base", default=None, help="--reference openai:NAME: its server, up to /v1.")
@click.option("--reference-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Share of calibrated requests also scored by --reference (logged for `refcal monitor`).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@click.option("--log", "log_dir", type=_PATH, default=None,
              help="Monitoring log folder (append-only JSONL segments, read by `refcal monitor`).")
@click.option("--log-text", is_flag=True, help="Also store prompt and answer text in the monitoring log.")
@click.option("--fsync", type=click.Choice(["always", "interval", "never"]), default="interval", show_default=True,
              help="Monitoring log: fsync after every record, once a second (in the background), or never (kill -9 is safe "
                   "with all three; fsync guards against power loss).")
@click.option("--api-key-env", default=None, help="Environment variable with the key clients must send (Bearer).")
@click.option("--upstream-key-env", default="REFCAL_UPSTREAM_API_KEY", show_default=True,
              help="Environment variable with the upstream's key (if set, sent instead of the client's).")
@click.option("--allow-other-k", is_flag=True,
              help="Apply a temperature fitted on another number of options (else such requests get 422).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds to connect and between two reads of an upstream answer; an answer that is not "
                   "streamed must be complete within it too.")
@click.option("--letters", type=click.Choice(["auto", "exact", "topk"]), default="auto", show_default=True,
              help="How option letters are scored. exact: the upstream scores the letter tokens themselves (vLLM's "
                   "logprob_token_ids); topk: from the top-k log-probabilities, absent letters floored; auto: exact "
                   "where the upstream can, else topk.")
@click.option("--top-logprobs", type=click.IntRange(1, 20), default=20, show_default=True,
              help="Top-k log-probabilities asked of the upstream for calibrated requests.")
def serve(cal_path: Path, upstream: str, reference: str | None, reference_api_base: str | None,
          reference_rate: float, host: str, port: int, log_dir: Path | None, log_text: bool, fsync: str,
          api_key_env: str | None, upstream_key_env: str, allow_other_k: bool, timeout: float,
          top_logprobs: int, letters: str) -> None:
    """Serve an OpenAI-compatible proxy that adds calibrated confidence (a `refcal` field) to answers.

    Requests without a `refcal` field pass through unchanged. See docs/serving.md.
    """
    from ..serve import ServeConfig
    from ..serve.app import serve as run

    config = ServeConfig(
        upstream=upstream, calibrator=str(cal_path), reference=reference, reference_api_base=reference_api_base,
        reference_rate=reference_rate, log_dir=None if log_dir is None else str(log_dir), api_key_env=api_key_env,
        upstream_key_env=upstream_key_env, log_text=log_text, allow_other_k=allow_other_k, timeout=timeout,
        top_logprobs=top_logprobs, fsync=fsync, letters=letters,
    )
    run(config, host=host, port=port)
