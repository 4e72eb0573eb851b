"""External models (`from:`): every model-loading field and `serve.models` take a Hugging Face causal-LM
folder, local or on an object store, and refuse what cannot be used with the field and the folder named.

Fast (no Ray): config validation, the CLI's exit code, a download from the tests' S3 server into the
run's model cache, and a serve spec with an external model next to a stage model. Last, one test on a
real local Ray Serve (~45 s): the `openai` client gets answers from both.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from cli import llmray

from llmray.cli import main
from llmray.config import ConfigError
from llmray.models import ModelSourceError, check_causal_lm_folder, model_cache, resolve_model_source
from llmray.pipeline import parse_pipeline

# ---------------------------------------------------------------- bad folders


def _copy(src: Path, dst: Path, drop=()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def no_weights(tmp, causal, reward):
    return _copy(causal, tmp / "no-weights", drop=("*.safetensors",))


def bin_only(tmp, causal, reward):
    d = _copy(causal, tmp / "bin-only", drop=("*.safetensors",))
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    return d


def classifier(tmp, causal, reward):
    return reward  # LlamaForSequenceClassification


def encoder(tmp, causal, reward):
    return _edit_config(_copy(causal, tmp / "encoder"), model_type="bert", architectures=["BertForMaskedLM"])


def small_embedding(tmp, causal, reward):
    # The 1024-token tokenizer against an embedding of 1000 rows.
    return _edit_config(_copy(causal, tmp / "small-embedding"), vocab_size=1000)


def no_tokenizer(tmp, causal, reward):
    return _copy(causal, tmp / "no-tokenizer", drop=("tokenizer*", "special_tokens_map.json", "chat_template*"))


def missing(tmp, causal, reward):
    return tmp / "not-there"


BAD = [(no_weights, "no weights"), (bin_only, "safetensors only"), (classifier, "not a causal language model"),
       (encoder, "not a causal language model"), (small_embedding, "the embedding has 1000 rows"),
       (no_tokenizer, "tokenizer does not load"), (missing, "no such folder")]


def _pipeline(tmp_path, causal: Path, place: str, folder) -> dict:
    """A pipeline whose field at `place` holds `folder`; every other model comes from `causal`."""
    good, bad = str(causal), str(folder)
    stages = {"chat": {"kind": "sft", "from": good}}
    serve = {"models": ["chat"]}
    if place == "sft":
        stages["chat"]["from"] = bad
    elif place == "pretrain":
        stages["base"] = {"kind": "pretrain", "data": "toks", "from": bad}
    elif place == "constitution":
        stages["cai"] = {"kind": "constitution", "from": bad}
    elif place == "feedback":
        stages["cai"] = {"kind": "constitution", "init": "chat", "feedback_from": bad}
    elif place == "align":
        stages["safety"] = {"kind": "align", "models": ["chat"], "from": {"ext": bad}}
    elif place == "serve":
        serve["models"].append({"name": "base", "from": bad})
    return {"name": "p", "workdir": str(tmp_path / "runs"), "stages": stages, "serve": serve}


FIELDS = {"sft": "stages.chat.from", "pretrain": "stages.base.from", "constitution": "stages.cai.from",
          "feedback": "stages.cai.feedback_from", "align": "stages.safety.from.ext",
          "serve": "serve.models.1.external.from"}


@pytest.mark.parametrize("make, why", BAD, ids=[m.__name__ for m, _ in BAD])
def test_each_bad_folder_is_a_config_error_naming_field_and_folder(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                    make, why):
    folder = make(tmp_path, tiny_causal_dir, tiny_reward_dir)
    with pytest.raises(ConfigError) as e:
        parse_pipeline(_pipeline(tmp_path, tiny_causal_dir, "sft", folder))
    assert "stages.chat.from" in str(e.value) and str(folder) in str(e.value) and why in str(e.value)
    with pytest.raises(ModelSourceError, match=why):
        check_causal_lm_folder(folder, "stages.chat.from")


@pytest.mark.parametrize("place", list(FIELDS))
def test_every_model_field_checks_its_folder(tmp_path, tiny_causal_dir, tiny_reward_dir, place):
    folder = no_weights(tmp_path, tiny_causal_dir, tiny_reward_dir)
    with pytest.raises(ConfigError) as e:
        parse_pipeline(_pipeline(tmp_path, tiny_causal_dir, place, folder))
    assert FIELDS[place] in str(e.value) and str(folder) in str(e.value) and "no weights" in str(e.value)
    if place != "pretrain":  # (its data would need a tokenize stage)
        ok = parse_pipeline(_pipeline(tmp_path, tiny_causal_dir, place, tiny_causal_dir))
        assert "chat" in ok.stages


@pytest.mark.integration  # runs the CLI in a subprocess
def test_validate_exits_2_naming_every_bad_field_without_a_traceback(tmp_path, tiny_causal_dir, tiny_reward_dir,
                                                                     capsys):
    raw = _pipeline(tmp_path, tiny_causal_dir, "serve", tiny_reward_dir)
    raw["stages"]["chat"]["from"] = str(small_embedding(tmp_path, tiny_causal_dir, tiny_reward_dir))
    raw["stages"]["cai"] = {"kind": "constitution", "init": "chat", "feedback_from": str(tmp_path / "gone")}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    for field, why in (("stages.chat.from", "the embedding has 1000 rows"),
                       ("stages.cai.feedback_from", "no such folder"),
                       ("serve.models.1.external.from", "not a causal language model")):
        line = next((ln for ln in err.splitlines() if field in ln), "")
        assert why in line, err
    assert str(tiny_reward_dir) in err and "Traceback" not in err
    # The same as a user runs it: a fresh process, exit 2, no traceback.
    proc = llmray("validate", path, timeout=300)
    assert proc.returncode == 2 and "stages.chat.from" in proc.stderr and "Traceback" not in proc.stderr


def test_good_folders_validate_everywhere(tmp_path, tiny_causal_dir):
    raw = _pipeline(tmp_path, tiny_causal_dir, "serve", tiny_causal_dir)
    raw["stages"]["cai"] = {"kind": "constitution", "from": str(tiny_causal_dir),
                            "feedback_from": str(tiny_causal_dir)}
    raw["stages"]["safety"] = {"kind": "align", "models": ["chat"], "model_dirs": {"ext": str(tiny_causal_dir)}}
    pipe = parse_pipeline(raw)
    assert pipe.stages["cai"].from_ == str(tiny_causal_dir)  # user values kept as written
    assert pipe.stages["safety"].model_dirs == {"ext": str(tiny_causal_dir)}  # the former name still works
    assert pipe.serve.models[1].name == "base" and pipe.serve.models[0] == "chat"
    assert parse_pipeline(yaml.safe_load(yaml.safe_dump(pipe.model_dump(mode="json"))))  # resolved file reloads


def test_external_serve_names_must_not_clash_with_stages(tmp_path, tiny_causal_dir):
    raw = _pipeline(tmp_path, tiny_causal_dir, "sft", tiny_causal_dir)
    raw["serve"]["models"].append({"name": "chat", "from": str(tiny_causal_dir)})
    with pytest.raises(ConfigError, match=r"serve\.models: .*listed twice: \['chat'\]"):
        parse_pipeline(raw)
    raw["serve"]["models"] = [{"name": "chat", "from": str(tiny_causal_dir)}]
    with pytest.raises(ConfigError, match=r"serve\.models\.0\.name: 'chat' is a stage"):
        parse_pipeline(raw)
    raw["serve"] = {"models": ["chat", {"name": "base", "from": str(tiny_causal_dir)}], "default": "nope"}
    with pytest.raises(ConfigError, match="serve.default"):
        parse_pipeline(raw)
    raw["serve"] = {"models": ["chat", {"name": "base"}]}
    with pytest.raises(ConfigError, match=r"serve\.models\.1\.external\.from"):
        parse_pipeline(raw)
    raw["serve"] = {"models": ["chat", {"name": "base", "from": str(tiny_causal_dir)}], "default": "base"}
    assert parse_pipeline(raw).serve.default == "base"


# ---------------------------------------------------------------- object-store sources


def _upload(fs, folder: Path, dest: str, extra: dict | None = None) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with fs.open_output_stream(f"{dest}/{p.relative_to(folder).as_posix()}") as f:
                f.write(p.read_bytes())
    for rel, data in (extra or {}).items():
        with fs.open_output_stream(f"{dest}/{rel}") as f:
            f.write(data)


def test_uri_source_is_downloaded_once_into_the_run_cache(tmp_path, s3_endpoint, tiny_causal_dir):
    endpoint, fs = s3_endpoint
    fs.create_dir("models")
    _upload(fs, tiny_causal_dir, "models/tiny", {"pytorch_model.bin": b"pickle"})
    uri = f"s3://models/tiny?endpoint_override={endpoint}&scheme=http"
    # Config time: the URI is parsed, not fetched.
    pipe = parse_pipeline(_pipeline(tmp_path, tiny_causal_dir, "sft", uri))
    assert pipe.stages["chat"].from_ == uri
    cache = model_cache(tmp_path / "runs" / "p")
    folder = resolve_model_source(uri, cache, "stages.chat.from")
    assert folder.parent == cache and folder.is_dir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (folder / name).read_bytes() == (tiny_causal_dir / name).read_bytes()
    assert not (folder / "pytorch_model.bin").exists()  # pickles never come down
    assert "endpoint_override" not in "".join(p.read_text() for p in cache.glob("*.json"))

    (folder / "marker").write_text("still the first download")
    assert resolve_model_source(uri, cache, "stages.chat.from") == folder
    assert (folder / "marker").exists()  # reused, not downloaded again

    _upload(fs, tiny_causal_dir, "models/tiny", {"generation_config.json": b'{"do_sample": false}'})
    again = resolve_model_source(uri, cache, "stages.chat.from")
    assert again == folder and not (again / "marker").exists()  # the store changed: fresh copy
    assert json.loads((again / "generation_config.json").read_text()) == {"do_sample": False}


def test_uri_sources_are_checked_before_and_after_download(tmp_path, s3_endpoint, tiny_causal_dir,
                                                          tiny_reward_dir):
    endpoint, fs = s3_endpoint
    fs.create_dir("bad")
    _upload(fs, no_weights(tmp_path, tiny_causal_dir, tiny_reward_dir), "bad/pickles",
            {"pytorch_model.bin": b"pickle"})
    _upload(fs, tiny_reward_dir, "bad/classifier")
    cache = tmp_path / "cache"
    q = f"?endpoint_override={endpoint}&scheme=http"
    with pytest.raises(ModelSourceError, match=r"stages\.x\.from: s3://bad/pickles: only PyTorch pickle"):
        resolve_model_source(f"s3://bad/pickles{q}", cache, "stages.x.from")
    assert not cache.exists()  # refused before anything came down
    with pytest.raises(ModelSourceError, match=r"stages\.x\.from: .* not a causal language model"):
        resolve_model_source(f"s3://bad/classifier{q}", cache, "stages.x.from")
    with pytest.raises(ModelSourceError, match="nothing there"):
        resolve_model_source(f"s3://bad/none{q}", cache, "stages.x.from")
    with pytest.raises(ConfigError, match=r"stages\.chat\.from.*unsupported URI scheme"):
        parse_pipeline(_pipeline(tmp_path, tiny_causal_dir, "sft", "ftp://host/model"))


# ---------------------------------------------------------------- serving an external model


def _completed_stage(root: Path, name: str, model_dir: Path) -> None:
    shutil.copytree(model_dir, root / name / "model")
    (root / name / "manifest.json").write_text(json.dumps(
        {"name": name, "kind": "sft", "status": "completed", "finished": "2025-01-02T03:04:05+00:00",
         "outputs": {"model": "model"}, "metrics": {}}))


def test_serve_spec_has_external_models_next_to_stage_models(tmp_path, s3_endpoint, tiny_causal_dir):
    from llmray.serve.spec import resolve_spec

    endpoint, fs = s3_endpoint
    fs.create_dir("served")
    _upload(fs, tiny_causal_dir, "served/base")
    raw = _pipeline(tmp_path, tiny_causal_dir, "sft", tiny_causal_dir)
    raw["serve"] = {"models": ["chat", {"name": "base", "from": str(tiny_causal_dir)},
                               {"name": "remote", "from": f"s3://served/base?endpoint_override={endpoint}&scheme=http"}],
                    "default": "chat"}
    pipe = parse_pipeline(raw)
    root = tmp_path / "runs" / "p"
    _completed_stage(root, "chat", tiny_causal_dir)
    spec = resolve_spec(pipe)
    assert [m["id"] for m in spec["models"]] == ["p/chat", "p/base", "p/remote"]
    assert [m["kind"] for m in spec["models"]] == ["sft", "external", "external"]
    chat, base, remote = spec["models"]
    assert chat["dir"] == str((root / "chat" / "model").resolve())
    assert base["dir"] == str(tiny_causal_dir.resolve()) and base["stage"] == "base"  # `base` works as an alias
    assert Path(remote["dir"]).parent == model_cache(root).resolve() and remote["from"] == "s3://served/base"
    assert not base["blocked"] and spec["default"] == "p/chat"
    assert spec["settings"]["models"][1] == {"name": "base", "from": str(tiny_causal_dir)}

    # A folder that broke after validation is refused when serving starts, naming the field.
    from llmray.serve.spec import ServeError

    broken = _copy(tiny_causal_dir, tmp_path / "broken")
    raw["serve"]["models"][1]["from"] = str(broken)
    pipe = parse_pipeline(raw)
    os.remove(broken / "model.safetensors")
    with pytest.raises(ServeError, match=r"serve\.models\.1\.from: .*broken: no weights"):
        resolve_spec(pipe)


@pytest.mark.slow  # a Serve start of its own (~30 s); in CI the spec test above checks the external model's entry
# and tests/test_serve_app.py serves spec entries to the `openai` client
def test_openai_client_gets_answers_from_an_external_and_a_stage_model(tmp_path, serve_port, tiny_causal_dir):
    """`llmray serve`'s start path on a real local Ray Serve: the stage model and the external `from:`
    model are deployed side by side and each answers the official `openai` client under its own id."""
    import openai

    from llmray.serve.launch import start_serving, stop_serving

    raw = _pipeline(tmp_path, tiny_causal_dir, "sft", tiny_causal_dir)
    raw["serve"] = {"models": ["chat", {"name": "base", "from": str(tiny_causal_dir)}], "port": serve_port,
                    "engine": "hf", "num_cpus": 0.25, "ingress_num_cpus": 0.05}
    pipe = parse_pipeline(raw)
    _completed_stage(tmp_path / "runs" / "p", "chat", tiny_causal_dir)
    info = start_serving(pipe, echo=lambda m: None)
    try:
        client = openai.OpenAI(base_url=info["url"], api_key="none", max_retries=0, timeout=120)
        by_id = {m.id: m for m in client.models.list()}
        assert sorted(by_id) == ["p/base", "p/chat"]
        for model in ("p/chat", "p/base", "base"):  # the short name works as for stages
            r = client.chat.completions.create(model=model, max_tokens=4,
                                               messages=[{"role": "user", "content": "Hi"}])
            assert r.model == (model if "/" in model else "p/base")
            assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    finally:
        stop_serving(pipe)


def test_a_stage_downloads_its_uri_model_and_refuses_a_bad_one_in_its_first_seconds(tmp_path, ray_local,
                                                                                  s3_endpoint, tiny_causal_dir,
                                                                                  tiny_reward_dir):
    """A real align stage on Ray whose `from:` models are URIs: a classifier is refused when the stage
    starts (failed manifest naming the field, nothing marked complete); a causal LM is downloaded into
    <run>/.models/ and evaluated."""
    from llmray.runner import StageFailed, read_manifest, run_dir, run_pipeline

    endpoint, fs = s3_endpoint
    fs.create_dir("stagemodels")
    _upload(fs, tiny_causal_dir, "stagemodels/causal")
    _upload(fs, tiny_reward_dir, "stagemodels/classifier")
    q = f"?endpoint_override={endpoint}&scheme=http"
    stage = {"kind": "align", "max_per_group": 1, "samples_per_model": 1,
             "generation": {"max_new_tokens": 4, "cpus_per_model": 0.5},
             "from": {"bad": f"s3://stagemodels/classifier{q}"}}
    raw = {"name": "p", "workdir": str(tmp_path / "runs"), "stages": {"safety": stage}}
    pipe = parse_pipeline(raw)
    with pytest.raises(StageFailed, match=r"stages\.safety\.from\.bad: s3://stagemodels/classifier .*not a causal"):
        run_pipeline(pipe, echo=lambda m: None)
    assert read_manifest(run_dir(pipe) / "safety")["status"] == "failed"

    stage["from"] = {"remote": f"s3://stagemodels/causal{q}"}
    pipe = parse_pipeline(raw)
    assert run_pipeline(pipe, echo=lambda m: None) == {"safety": "completed"}
    man = read_manifest(run_dir(pipe) / "safety")
    assert man["metrics"]["table"][0]["stage"] == "remote" and man["metrics"]["table"][0]["kind"] == "external"
    cached = [json.loads(p.read_text())["uri"] for p in model_cache(run_dir(pipe)).glob("*.json")]
    assert sorted(cached) == ["s3://stagemodels/causal", "s3://stagemodels/classifier"]
