"""Pretrained decoders by folder, GGUF file or registered name (``decoder.path``).

- a folder: a Hugging Face causal LM (``config.json``, weights, tokenizer), used as it is;
- a ``.gguf`` file (llama.cpp's format): converted once, by transformers' GGUF reader, into a plain
  float32 Hugging Face folder under the user's cache (``$MMASSIST_CACHE/decoders/<name>-<hash>``), then
  loaded from there (0.3 s instead of 15 s of dequantizing); the folder is written beside its final name and
  renamed into place, so an interrupted conversion leaves nothing half-written;
- a name a plugin registered with ``kind="decoder"`` (``mmassist plugins`` lists them), such as
  ``smollm2-135m-instruct``: the plugin's ``path()`` finds the files (usually a GGUF file in an installed
  package) and converts them as above.

A checkpoint keeps ``decoder.path`` as written, so a model fine-tuned on a named decoder references it
rather than copying its hundreds of MB.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mmassist.core.cache import cache_dir
from mmassist.core.contract.host import Host
from mmassist.core.errors import ConfigError, UndecodableInputError
from mmassist.core.hf import quiet_transformers

GGUF_MAGIC = b"GGUF"
# The folder a conversion writes last: a folder without it is not a finished conversion.
_DONE = "model.safetensors"


def decoder_folder(path: str | Path, host: Host | None = None) -> Path:
    """The local Hugging Face folder ``decoder.path`` names: a folder as it is, a ``.gguf`` file converted
    (once) into the cache, or a registered decoder name resolved by its plugin.

    :raises ConfigError: for a name that is neither a path here nor a registered decoder, or an assistant's
        name (``starter``) given as a decoder.
    :raises MissingPluginError: (from the plugin) when the package that carries a named decoder is missing.
    """
    if host is None and not Path(path).exists():
        host = Host(load_entrypoints=False)  # the built-in names
    source = host.model_source(str(path)) if host is not None else None
    if source is not None:
        if source.kind != "decoder":
            raise ConfigError(f"decoder.path={path!r} names an assistant, not a decoder: load it with "
                              "Assistant.from_pretrained, or fine-tune from it with init_from")
        path = source.path()
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return gguf_folder(path)
    if not path.is_dir():
        names = ", ".join(s.name for s in host.models if s.kind == "decoder") if host is not None else ""
        raise ConfigError(f"decoder.path={str(path)!r} is not a folder, a .gguf file or a registered decoder name"
                          f"{f' ({names})' if names else ''}; give a local Hugging Face causal LM folder, or "
                          "decoder.init to build a new model")
    return path


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), computed once per file version in a process: the tokenizer and
    the decoder of a model both resolve its GGUF file, and hashing 100 MB twice is a waste."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_folder(file: str | Path, *, cache: Path | None = None) -> Path:
    """A Hugging Face folder with the model and tokenizer of the GGUF ``file``, converted on first use.

    The folder is keyed by the file's name and content hash, so a changed file converts again and two
    files never share a folder.

    :param cache: where converted folders go (default: ``cache_dir("decoders")``).
    :raises ConfigError: when ``file`` does not exist.
    :raises UndecodableInputError: when it is not a readable GGUF file (truncated, corrupt, another format).
    """
    file = Path(file)
    if not file.is_file():
        raise ConfigError(f"no such GGUF file: {file}")
    with open(file, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UndecodableInputError(f"{file} is not a GGUF file (it does not start with 'GGUF')")
    root = Path(cache) if cache is not None else cache_dir("decoders")
    target = root / f"{file.stem}-{file_digest(file)[:16]}"
    if (target / _DONE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    print(f"mmassist: converting {file.name} to a Hugging Face folder in {target} (once; this takes a while)",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        _convert(file, tmp)
        if (target / _DONE).is_file():  # another process finished first
            return target
        shutil.rmtree(target, ignore_errors=True)  # a folder some older, killed conversion left
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(file: Path, out: Path) -> None:
    """Dequantize ``file`` with transformers and save it as a plain float32 model with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    except ImportError as e:
        raise ConfigError(f"reading {file.name} needs the gguf package: pip install gguf ({e})") from None
    except Exception as e:  # the reader's errors for a truncated or damaged file are of many types
        raise UndecodableInputError(f"{file} could not be read as a GGUF model (truncated or corrupt?): "
                                    f"{type(e).__name__}: {e}") from None
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; its weights are plain
    # float32 tensors by now, so the marks are taken off.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = file.stem
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
