"""Model presets, HF-format save, and external model folders (`from:`).

A preset is a LlamaConfig recipe; vocab size and special-token ids come from the
tokenizer. Head size stays >= 32 in every preset because vLLM's CPU backend refuses less.
Every trained stage's `model/` comes out of `save_model`.

External models: a `from:` value (pydantic type `ModelSource`) is a local folder or an
object-store URI; `resolve_model_source` turns it into a checked local folder (see the section
below), the one path every stage kind and `serve.models` use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from llmray.config import NAME_RE, StrictModel
from llmray.storage import StorageError, check_workdir, copy_file, is_uri, open_uri

PRESETS: dict[str, dict] = {
    # ~1.3M non-embedding parameters: tests and the 2-core quickstart.
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=1024),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, max_position_embeddings=2048),
    "125m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=4096, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0),
}


class ModelConfig(StrictModel):
    """Architecture of a model trained from scratch (ignored when a stage starts from `init`/`from`)."""

    preset: Literal["tiny", "small", "125m", "1b", "8b"] = Field("tiny", description="Size recipe (LlamaConfig).")
    hidden_size: int | None = Field(None, ge=32, description="Override the preset's hidden size.")
    num_hidden_layers: int | None = Field(None, ge=1, description="Override the preset's layer count.")
    num_attention_heads: int | None = Field(None, ge=1, description="Override the preset's head count.")
    intermediate_size: int | None = Field(None, ge=1, description="Override the preset's MLP width.")
    max_position_embeddings: int | None = Field(None, ge=16, description="Override the context length.")
    tie_word_embeddings: bool = Field(True, description="Share input and output embeddings.")


def llama_config(cfg: ModelConfig, tokenizer):
    """ModelConfig + tokenizer -> transformers LlamaConfig."""
    from transformers import LlamaConfig

    arch = dict(PRESETS[cfg.preset])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings"):
        if getattr(cfg, key) is not None:
            arch[key] = getattr(cfg, key)
    if cfg.num_attention_heads is not None:
        arch["num_key_value_heads"] = cfg.num_attention_heads
    head = arch["hidden_size"] // arch["num_attention_heads"]
    if arch["hidden_size"] % arch["num_attention_heads"] or head < 32:
        raise ValueError(f"hidden_size/num_attention_heads must divide evenly into heads of >= 32 (got {head}); "
                         "vLLM's CPU backend refuses smaller heads")
    return LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="sdpa", **arch,
    )


class DecodingConfig(StrictModel):
    """Decoding defaults written into a trained model's generation_config.json: what a served request that
    does not set them, and the align stage's greedy answers, decode with (llmray.generate.decoding_defaults).
    Unset fields keep the start folder's value (so dpo/ppo started from a chat model inherit its settings)."""

    repetition_penalty: float | None = Field(None, gt=0, description=(
        "Divide the logits of tokens already in the text by this (CTRL's penalty; 1.0 = off). Small models "
        "loop without it (\"the file is the file is...\"): 1.2-1.3 stops that."))
    no_repeat_ngram_size: int | None = Field(None, ge=0, description=(
        "Never repeat an n-gram of this size (0 = off). Honoured by the transformers engines only; vLLM "
        "has no such setting (the server logs a warning)."))
    max_new_tokens: int | None = Field(None, ge=1, description="Default answer length cap (a request's "
                                                               "max_tokens wins).")


_DECODING_KEYS = tuple(DecodingConfig.model_fields)


def save_model(model, tokenizer, out_dir: Path, source_dir: Path | None = None,
               decoding: DecodingConfig | None = None) -> Path:
    """Save a model (safetensors), its tokenizer and a generation config that stops on end-of-turn and
    decodes greedily. `source_dir`: the folder training started from; its generation config's extra stop
    ids (e.g. Llama 3.1's <|eom_id|>) and decoding defaults (`DecodingConfig` fields) are kept, `decoding`'s set
    fields replace them."""
    from transformers import GenerationConfig

    from llmray.chat import stop_token_ids

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    if hasattr(model, "generation_config") and getattr(model.config, "architectures", [""])[0].endswith("CausalLM"):
        extra = _inherited_decoding(source_dir)
        if decoding is not None:
            extra.update(decoding.model_dump(exclude_none=True))
        gen = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_token_ids(tokenizer, source_dir),
                               pad_token_id=tokenizer.pad_token_id, do_sample=False, **extra)
        gen.save_pretrained(str(out_dir))
    return out_dir


def _inherited_decoding(source_dir: Path | None) -> dict:
    """The start folder's decoding defaults among `DECODING_FIELDS` that differ from transformers' own
    (sampling settings are not carried: an exported model decodes greedily unless a request samples)."""
    path = Path(source_dir) / "generation_config.json" if source_dir else None
    if path is None or not path.is_file():
        return {}
    saved = json.loads(path.read_text())
    off = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "max_new_tokens": None}
    return {k: saved[k] for k in _DECODING_KEYS if saved.get(k) not in (None, off[k])}


# ---------------------------------------------------------------- external model folders (`from:`)
#
# spec (a `from:` value) --resolve_model_source--> a local folder: a local path as is; an object-store
# URI listed, then downloaded once into <run>/.models/<digest>/ (re-downloaded only when the store's
# listing changes) --check_causal_lm_folder--> config.json names an AutoModelForCausalLM class,
# safetensors weights, a tokenizer that loads and fits the embedding. Config fields take the
# `ModelSource` type: local folders are checked when the pipeline is validated (`llmray validate`
# exits 2), URIs only parsed then and checked in the first seconds of the stage, after download.

MODEL_CACHE = ".models"  # under the run directory
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch pickles: never loaded, never downloaded
OTHER_WEIGHTS = (".h5", ".msgpack", ".onnx", ".gguf", ".tflite")  # other frameworks' copies: not downloaded
_CHECKED: dict[tuple, bool] = {}  # (folder, file signature) of folders that passed, per process


class ModelSourceError(ValueError):
    """An external model that cannot be used; the message names the field (when known) and the folder."""


def is_model_uri(spec: str) -> bool:
    """An object-store URI (file:// counts as a local path)."""
    return is_uri(spec) and not spec.lower().startswith("file://")


def local_model_path(spec: str) -> Path:
    """A local `from:` value as an absolute path (`~` expanded, file:// stripped)."""
    if spec.lower().startswith("file://"):
        spec = urllib.parse.unquote(urllib.parse.urlsplit(spec).path)
    return Path(spec).expanduser().absolute()


def shown_uri(uri: str) -> str:
    """A URI for messages and files: the query (endpoint, maybe credentials) left out."""
    return uri.split("?", 1)[0]


def check_model_source(spec: str) -> str:
    """Config-time check of a `from:` value (the `ModelSource` validator); returns it unchanged."""
    if is_model_uri(spec):
        check_workdir(spec)  # a scheme pyarrow.fs opens, a bucket; no network
        return spec
    check_causal_lm_folder(local_model_path(spec))
    return spec


ModelSource = Annotated[str, AfterValidator(check_model_source)]


def check_start(init: str | None, from_: str | None, required: bool = True) -> None:
    """The start rule every model-loading kind shares (its config's `model_validator` calls this): a stage's
    model (`init`) or an outside one (`from`), never both; `required=False` where a kind may also start
    from scratch (pretrain)."""
    what = "init (a stage) and from (a Hugging Face causal-LM folder or object-store URI)"
    if init and from_:
        raise ValueError(f"set {'exactly' if required else 'at most'} one of {what}, not both")
    if required and not (init or from_):
        raise ValueError(f"set exactly one of {what}")


def _fail(field: str | None, where, msg: str):
    raise ModelSourceError(f"{field + ': ' if field else ''}{where}: {msg}")


def check_causal_lm_folder(path, field: str | None = None, shown: str | None = None) -> Path:
    """Refuse a folder that AutoModelForCausalLM / AutoTokenizer (trust_remote_code off) cannot use
    as a generator: missing, no config.json, not a causal-LM architecture, no safetensors weights, a
    tokenizer that does not load or has more tokens than the embedding has rows. Messages name
    `field` and the folder (or `shown`, e.g. the URI it was downloaded from)."""
    path = Path(path)
    where = shown or path
    if not path.is_dir():
        why = ("no such folder (give a local Hugging Face model folder or an object-store URI; llmray never "
               "downloads from a model hub)") if not path.exists() else "not a folder"
        _fail(field, where, why)
    files = {p.name: p.stat() for p in path.iterdir() if p.is_file()}
    key = (str(path.resolve()), tuple(sorted((n, s.st_size, s.st_mtime_ns) for n, s in files.items())))
    if key in _CHECKED:
        return path
    try:
        cfg = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        _fail(field, where, "no config.json: not a Hugging Face model folder")
    except (OSError, ValueError) as e:
        _fail(field, where, f"config.json does not parse: {e}")
    _check_architecture(cfg, where, field)
    _check_weights(sorted(files), path, field, where=where)
    _check_tokenizer(cfg, path, field, where)
    _CHECKED[key] = True
    return path


def _causal_classes() -> tuple[dict, set, dict, dict]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    classes = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        classes.update([v] if isinstance(v, str) else v)
    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, classes, CONFIG_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _check_architecture(cfg: dict, where, field: str | None) -> None:
    import transformers

    by_type, classes, known, masked = _causal_classes()
    model_type, archs = cfg.get("model_type"), cfg.get("architectures") or []
    if model_type not in known:
        _fail(field, where, f"model_type {model_type!r} is unknown to transformers {transformers.__version__} "
                           "(custom modelling code is never run: trust_remote_code stays off)")
    if model_type not in by_type:
        _fail(field, where, f"model_type {model_type!r} has no causal-LM class in transformers "
                           "(AutoModelForCausalLM): an encoder or other non-generative model")
    wrong = [a for a in archs if a not in classes]
    if wrong:
        _fail(field, where, f"architectures {wrong} is not a causal language model (for {model_type}: "
                           f"{by_type[model_type]}); a sequence-classification, encoder or other head cannot "
                           "be trained or served as a generator")
    if not archs and model_type in masked and not cfg.get("is_decoder"):
        _fail(field, where, f"model_type {model_type!r} without `architectures` is an encoder (masked LM); "
                           "name a causal-LM class in config.json's architectures")


def _check_weights(names: list[str], path, field: str | None, remote: bool = False, where=None) -> None:
    """Safetensors weights (single file, or an index whose shards are all there). `remote`: `names`
    is a store's listing (the index's shards are checked after download)."""
    where = where or path

    if "model.safetensors.index.json" in names:
        if remote:
            return
        try:
            shards = set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            _fail(field, where, f"model.safetensors.index.json does not parse: {e}")
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            _fail(field, where, f"model.safetensors.index.json names missing shards: {missing[:3]}")
        return
    if any(n.endswith(".safetensors") for n in names):
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        _fail(field, where, f"only PyTorch pickle weights ({', '.join(pickles[:3])}); llmray loads safetensors "
                           "only (a pickle can run code when loaded): convert once with "
                           "model.save_pretrained(folder, safe_serialization=True)")
    _fail(field, where, "no weights (*.safetensors or model.safetensors.index.json)")


def _check_tokenizer(cfg: dict, path: Path, field: str | None, where) -> None:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - whatever transformers raises becomes the field's error
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _fail(field, where, f"the tokenizer does not load with AutoTokenizer (trust_remote_code off): "
                           f"{type(e).__name__}: {first}")
    rows = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if rows and len(tok) > rows:
        _fail(field, where, f"the tokenizer has {len(tok)} tokens but the embedding has {rows} rows (config.json "
                           f"vocab_size): ids >= {rows} would index past it; use the model's own tokenizer")


def resolve_model_source(spec: str, cache_dir, field: str | None = None, check: bool = True) -> Path:
    """The local folder of a `from:` value: a local path as is; an object-store URI downloaded into
    `<cache_dir>/<digest>/` (kept, and reused while the store's listing is unchanged). Checked with
    `check_causal_lm_folder` unless `check` is false; every error names `field` and the source."""
    if not is_model_uri(spec):
        path, shown = local_model_path(spec), None
    else:
        path = _download(spec, Path(cache_dir), field)
        shown = f"{shown_uri(spec)} (downloaded to {path})"
    return check_causal_lm_folder(path, field, shown) if check else path


def model_cache(run_dir) -> Path:
    """Where downloaded `from:` models live in a run directory."""
    return Path(run_dir) / MODEL_CACHE


def _listing(uri: str, field: str | None) -> tuple[object, str, dict[str, list[int]]]:
    """(filesystem, folder path on it, relative name -> [size, mtime_ns]) of a model URI."""
    import pyarrow.fs as pafs

    try:
        fs, root = open_uri(uri)
        infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/"), recursive=True, allow_not_found=True))
    except (StorageError, OSError) as e:
        _fail(field, shown_uri(uri), f"cannot list the model folder on the store: {e}")
    files = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            rel = i.path[len(root.rstrip("/")) + 1:]
            files[rel] = [i.size, i.mtime_ns]
    return fs, root.rstrip("/"), files


def _wanted(files: dict, uri: str, field: str | None) -> dict:
    """The files to download: not pickles or other frameworks' weights (safetensors are required)."""
    if "config.json" not in files:
        _fail(field, shown_uri(uri), "no config.json there: not a Hugging Face model folder" if files
              else "nothing there (no objects under this prefix)")
    # Refused before any byte comes down: pickle-only or weightless folders (same messages as local ones).
    _check_weights(sorted(rel for rel in files if "/" not in rel), shown_uri(uri), field, remote=True)
    return {rel: v for rel, v in files.items() if not rel.endswith(PICKLE_SUFFIXES + OTHER_WEIGHTS)}


def _download(uri: str, cache_dir: Path, field: str | None) -> Path:
    """Download a model folder once; a later call with the same store listing reuses the copy."""

    fs, root, files = _listing(uri, field)
    wanted = _wanted(files, uri, field)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    dest, stamp = cache_dir / digest, cache_dir / f"{digest}.json"
    record = {"uri": shown_uri(uri), "files": wanted}

    def current() -> bool:
        try:
            return dest.is_dir() and json.loads(stamp.read_text()) == record
        except (OSError, ValueError):
            return False

    if current():
        return dest
    tmp = cache_dir / f".tmp-{digest}-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for rel in sorted(wanted):
            copy_file(fs, f"{root}/{rel}", None, str(tmp / rel))
    except StorageError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _fail(field, shown_uri(uri), f"download failed: {e}")
    if current():  # another stage finished the same download meanwhile: keep the copy it may be reading
        shutil.rmtree(tmp, ignore_errors=True)
        return dest
    # The stamp goes last: a crash in between leaves a folder without a matching stamp, downloaded again.
    stamp.unlink(missing_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stamp.write_text(json.dumps(record, indent=1))
    return dest


def check_model_set(models: list[str], model_dirs: dict) -> None:
    """The models a multi-model stage (align, eval) takes: stage names in `models` and labelled folders
    in `from`. At least one, none twice, labels that are valid names; ValueError otherwise."""
    if not models and not model_dirs:
        raise ValueError("name at least one model: `models` (stages) or `from` (external models)")
    dup = sorted({m for m in models if models.count(m) > 1} | (set(models) & set(model_dirs)))
    if dup:
        raise ValueError(f"models evaluated twice: {dup}")
    bad = [k for k in model_dirs if not re.match(NAME_RE, k)]
    if bad:
        raise ValueError(f"`from` labels must match {NAME_RE} (got {bad})")
