"""Tiny real artefacts for tests and benchmarks: a BPE tokenizer trained on stdlib docstrings and
randomly initialised Llama models saved in HF format (no hub downloads)."""

from __future__ import annotations

import pydoc
import socket
from pathlib import Path


def stdlib_texts(limit: int = 400) -> list[str]:
    """Docstrings of a fixed list of stdlib modules' public members (deterministic, offline)."""
    import importlib

    texts: list[str] = []
    for modname in ("json", "os", "re", "pathlib", "collections", "itertools", "functools", "string",
                    "textwrap", "random", "statistics", "heapq", "bisect", "csv", "argparse", "logging"):
        mod = importlib.import_module(modname)
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            doc = pydoc.getdoc(getattr(mod, name, None))
            if doc and len(doc) > 40:
                texts.append(doc)
            if len(texts) >= limit:
                return texts
    return texts


def tiny_tokenizer(out_dir: Path, vocab_size: int = 1024):
    from llmray.tok import save_tokenizer, train_bpe

    tok = train_bpe(stdlib_texts(), vocab_size=vocab_size)
    save_tokenizer(tok, Path(out_dir))
    return tok


def tiny_model_dir(out_dir: Path, kind: str = "causal", vocab_size: int = 1024, seed: int = 0,
                   tokenizer_dir: Path | None = None) -> Path:
    """A random tiny Llama (`causal` or `reward` = 1-label sequence classifier) saved in HF format."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    from llmray.models import ModelConfig, llama_config, save_model

    out_dir = Path(out_dir)
    if tokenizer_dir is None:
        tok = tiny_tokenizer(out_dir / "_tok", vocab_size)
    else:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = llama_config(ModelConfig(preset="tiny"), tok)
    torch.manual_seed(seed)
    if kind == "causal":
        model = LlamaForCausalLM(cfg)
    else:
        cfg.num_labels = 1
        model = LlamaForSequenceClassification(cfg)
    save_model(model, tok, out_dir)
    return out_dir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (for test servers on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- stock model families (bring your own)

# Chat templates as the vendors ship them (no `{% generation %}` markers), and their special tokens.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                  "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
                  "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
                  "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
                  "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                  "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

# family -> (architecture, template, special tokens, bos, eos, pad). Pad None: the tokenizer has none
# (Qwen2 base and Llama 3 ship without one), which llmray must handle without resizing embeddings.
FAMILIES = {
    "qwen2": ("Qwen2ForCausalLM", CHATML_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
              None, "<|im_end|>", None),
    "llama": ("LlamaForCausalLM", LLAMA3_TEMPLATE,
              ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "<|begin_of_text|>", "<|end_of_text|>", None),
    "gemma": ("GemmaForCausalLM", GEMMA_TEMPLATE, ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
              "<bos>", "<eos>", "<pad>"),
}


def family_tokenizer(family: str, vocab_size: int = 1024):
    """A byte-level BPE tokenizer trained on stdlib docstrings with a model family's special tokens and
    stock chat template (no markers), as a transformers PreTrainedTokenizerFast."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmray.tok import build_bpe_model

    _, template, specials, bos, eos, pad = FAMILIES[family]
    tok = build_bpe_model()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(stdlib_texts(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                 clean_up_tokenization_spaces=False, model_max_length=4096)
    hf.chat_template = template
    return hf


def tiny_family_dir(out_dir: Path, family: str = "qwen2", seed: int = 0) -> Path:
    """A random tiny causal LM of a real architecture (Qwen2, Llama, Gemma) with its family's stock chat
    template, saved the way the hub ships such folders: safetensors, config, tokenizer, generation config.
    Heads of 32 dims (vLLM's CPU backend refuses smaller ones)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    arch, *_ = FAMILIES[family]
    out_dir = Path(out_dir)
    tok = family_tokenizer(family)
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    kwargs = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  tie_word_embeddings=True)
    if family == "gemma":
        kwargs["head_dim"] = 32
    torch.manual_seed(seed)
    model = getattr(transformers, arch)(config_cls(**kwargs))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tok.save_pretrained(str(out_dir))
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id).save_pretrained(str(out_dir))
    return out_dir


# ---------------------------------------------------------------- user data layouts


def write_save_to_disk(folder: Path, records: list[dict]) -> Path:
    """A folder laid out as `datasets.Dataset.save_to_disk` writes it (Arrow IPC stream + state.json +
    dataset_info.json), written with pyarrow: `datasets` itself is not a dependency."""
    import json

    import pyarrow as pa

    folder = Path(folder)
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(records)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=2)
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": {}}))
    return folder


def write_dataset_dict(folder: Path, splits: dict[str, list[dict]]) -> Path:
    """A `datasets.DatasetDict.save_to_disk` folder: one subfolder per split + dataset_dict.json."""
    import json

    folder = Path(folder)
    for name, recs in splits.items():
        write_save_to_disk(folder / name, recs)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def write_byo_assets(folder: Path, n_chats: int = 256, n_pairs: int = 256) -> Path:
    """What `examples/bring-your-own.yaml` reads, made offline: a tiny random Qwen2 folder with a stock
    ChatML template and no pad token (`qwen-tiny/`), ShareGPT-style chats in Parquet (`chats.parquet`,
    from the built-in instruct set) and preference pairs as a `datasets` save_to_disk folder (`prefs/`,
    from the built-in preference set): the layouts users bring, not llmray's own."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmray.data.builtin import load_builtin

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_family_dir(folder / "qwen-tiny", "qwen2")
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    chats = [{"id": r["id"], "conversations": [{"from": roles[m["role"]], "value": m["content"]}
                                               for m in r["messages"]]}
             for r in load_builtin("instruct", "train")[:n_chats]]
    pq.write_table(pa.Table.from_pylist(chats), folder / "chats.parquet", row_group_size=64)
    pairs = [{"id": r["id"], "prompt": r["prompt"][-1]["content"], "chosen": r["chosen"],
              "rejected": r["rejected"]} for r in load_builtin("prefs", "train")[:n_pairs]]
    write_save_to_disk(folder / "prefs", pairs)
    return folder


def write_rlvr_assets(folder: Path, n_sft: int = 2000) -> Path:
    """What `examples/rlvr-arithmetic.yaml` reads: a random quickstart-sized model (the `tiny` Llama
    preset, llmray's tokenizer) in `init/`, and `arith_sft.jsonl`: the first `n_sft` train problems of
    `builtin:arithmetic` answered in the asked format, a warm start that GRPO then improves on."""
    from llmray.data.formats import write_jsonl
    from llmray.data.verifiable import arithmetic_prompts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model_dir(folder / "init", "causal")
    chats = [{"id": r["id"], "messages": [*r["prompt"], {"role": "assistant", "content": f"Answer: {r['reference']}"}]}
             for r in arithmetic_prompts("train")[:n_sft]]
    write_jsonl(folder / "arith_sft.jsonl", chats)
    return folder


# ---------------------------------------------------------------- web and code corpora (curate tests)

# Short real sentences per language; pages are made of them so language ID has ground truth.
SENTENCES = {
    "en": ["The river flows slowly through the old town, and children play on its banks in the summer.",
           "Our library opens at nine in the morning and closes late on Thursdays.",
           "She wrote a long letter to her brother, who had moved to the coast many years ago.",
           "The weather was cold, but the market was full of people buying bread and vegetables.",
           "After dinner we walked along the harbour and watched the boats come back to the port.",
           "Scientists have measured the temperature of the lake every winter for fifty years."],
    "de": ["Der Fluss fließt langsam durch die Altstadt, und im Sommer spielen die Kinder am Ufer.",
           "Unsere Bibliothek öffnet um neun Uhr morgens und schließt donnerstags erst spät am Abend.",
           "Sie schrieb ihrem Bruder einen langen Brief, der vor vielen Jahren an die Küste gezogen war.",
           "Das Wetter war kalt, aber der Markt war voller Menschen, die Brot und Gemüse kauften.",
           "Nach dem Abendessen gingen wir am Hafen entlang und sahen die Boote zurückkehren.",
           "Die Forscher haben die Temperatur des Sees seit fünfzig Jahren jeden Winter gemessen."],
    "fr": ["La rivière coule lentement à travers la vieille ville, et les enfants jouent sur ses rives en été.",
           "Notre bibliothèque ouvre à neuf heures du matin et ferme tard le jeudi soir.",
           "Elle a écrit une longue lettre à son frère, qui s'était installé sur la côte il y a des années.",
           "Le temps était froid, mais le marché était plein de gens qui achetaient du pain et des légumes.",
           "Après le dîner, nous nous sommes promenés le long du port pour regarder les bateaux rentrer.",
           "Les chercheurs mesurent la température du lac chaque hiver depuis cinquante ans."],
    "es": ["El río fluye despacio por el casco antiguo, y en verano los niños juegan en sus orillas.",
           "Nuestra biblioteca abre a las nueve de la mañana y cierra tarde los jueves.",
           "Ella escribió una carta larga a su hermano, que se había mudado a la costa hace muchos años.",
           "El tiempo era frío, pero el mercado estaba lleno de gente que compraba pan y verduras.",
           "Después de la cena paseamos por el puerto y vimos cómo volvían los barcos.",
           "Los científicos han medido la temperatura del lago cada invierno durante cincuenta años."],
    "it": ["Il fiume scorre lentamente attraverso la città vecchia, e d'estate i bambini giocano sulle sue rive.",
           "La nostra biblioteca apre alle nove del mattino e chiude tardi il giovedì.",
           "Lei ha scritto una lunga lettera a suo fratello, che si era trasferito sulla costa molti anni fa.",
           "Il tempo era freddo, ma il mercato era pieno di persone che compravano pane e verdure.",
           "Dopo cena abbiamo passeggiato lungo il porto e guardato le barche che tornavano.",
           "Gli scienziati misurano la temperatura del lago ogni inverno da cinquant'anni."],
    "nl": ["De rivier stroomt langzaam door de oude stad, en in de zomer spelen de kinderen aan de oever.",
           "Onze bibliotheek gaat om negen uur 's ochtends open en sluit op donderdag pas laat.",
           "Zij schreef een lange brief aan haar broer, die jaren geleden naar de kust was verhuisd.",
           "Het weer was koud, maar de markt was vol mensen die brood en groenten kochten.",
           "Na het eten liepen we langs de haven en keken we hoe de boten terugkwamen.",
           "Onderzoekers meten al vijftig jaar elke winter de temperatuur van het meer."],
    "pt": ["O rio corre devagar pela cidade velha, e no verão as crianças brincam nas suas margens.",
           "A nossa biblioteca abre às nove da manhã e fecha tarde às quintas-feiras.",
           "Ela escreveu uma longa carta ao irmão, que se tinha mudado para a costa há muitos anos.",
           "O tempo estava frio, mas o mercado estava cheio de pessoas a comprar pão e legumes.",
           "Depois do jantar passeámos pelo porto e vimos os barcos a regressar.",
           "Os cientistas medem a temperatura do lago todos os invernos há cinquenta anos."],
}
BOILERPLATE = {
    "nav": "Home Products Pricing Blog Careers Contact Login Register",
    "cookie": "This website stores cookies on your device. Accept all cookies or manage preferences.",
    "ad": "Sponsored advertisement: discount sneakers and cheap flights, order today with free shipping!",
    "footer": "Copyright 2024 Examplecorp Incorporated. All rights reserved. Imprint Sitemap Newsletter Subscribe",
}


def _page_html(title: str, paragraphs: list[str], lang: str, semantic: bool = True) -> str:
    """A page around the main text; `semantic=False` uses the div-and-class layout of older sites
    (no <nav>/<main>/<footer> for the extractor to lean on) plus a related-links list."""
    from html import escape

    b = BOILERPLATE
    links = "".join(f'<li><a href="/{w.lower()}">{w}</a></li>' for w in b["nav"].split())
    body = "".join(f"<p>{escape(p)}</p>\n" for p in paragraphs)
    if not semantic:
        return (f'<html lang="{lang}"><head><title>{escape(title)}</title></head>\n<body>\n'
                f'<div class="top-bar"><div class="cookie-notice">{b["cookie"]}</div>'
                f'<div class="navbar"><ul class="menu">{links}</ul></div></div>\n'
                f'<div class="wrapper"><div class="left-column"><div class="ad-slot">{b["ad"]}</div></div>\n'
                f'<div class="content"><div class="post"><h2 class="post-title">{escape(title)}</h2>\n'
                f'<div class="post-body">{body}</div></div></div></div>\n'
                f'<div class="bottom"><div class="copyright">{b["footer"]}</div></div>\n</body></html>\n')
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<script>window.dataLayer = [];</script><style>nav {{display: flex}}</style></head>\n<body>\n"
            f'<div id="cookie-banner" class="cookie-consent">{b["cookie"]}</div>\n'
            f'<header><nav class="menu"><ul>{links}</ul></nav></header>\n'
            f'<div class="layout"><main><article><h1>{escape(title)}</h1>\n{body}</article></main>\n'
            f'<aside class="sidebar advert"><div class="ad-banner">{b["ad"]}</div></aside></div>\n'
            f'<footer class="site-footer"><p>{b["footer"]}</p></footer>\n</body></html>\n')


def web_pages(n_docs: int = 24, per_language: int = 2, near_duplicates: bool = True) -> list[dict]:
    """Test web pages: stdlib module documentation (pydoc text, English) and pages in seven
    languages, each wrapped in navigation, cookie banner, advert and footer boilerplate.
    Half use semantic HTML5 tags, half a div layout. Each dict: url, lang, html, main (the planted
    main text: title and paragraphs); with `near_duplicates`, a last page repeats the first one."""
    import importlib

    pages = []
    mods = ("json", "os", "re", "pathlib", "collections", "itertools", "functools", "string", "textwrap",
            "random", "statistics", "heapq", "bisect", "csv", "argparse", "logging", "shutil", "tempfile",
            "datetime", "calendar", "fractions", "decimal", "difflib", "zipfile", "tarfile", "gzip")
    for modname in mods:
        if len(pages) >= n_docs:
            break
        mod = importlib.import_module(modname)
        paras = [" ".join(p.split()) for p in (pydoc.getdoc(mod) or "").split("\n\n")]
        paras = [p for p in paras if len(p) > 60 and not p.startswith((">>>", "-", "*"))][:6]
        if sum(map(len, paras)) < 400:
            continue
        title = f"{modname} module documentation"
        pages.append({"url": f"https://docs.example.org/library/{modname}.html", "lang": "en",
                      "html": _page_html(title, paras, "en", len(pages) % 2 == 0),
                      "main": "\n".join([title, *paras])})
    for lang, sents in SENTENCES.items():
        for k in range(per_language):  # disjoint sentence sets, so pages are not near-duplicates
            own = sents[3 * k: 3 * k + 3]
            paras = [own[0] + " " + own[1], own[2]]
            title = own[0].split(",")[0].rstrip(".")
            pages.append({"url": f"https://{lang}.example.net/article/{k}", "lang": lang,
                          "html": _page_html(title, paras, lang, k % 2 == 0), "main": "\n".join([title, *paras])})
    if near_duplicates:  # the first page again at another address, one word added to its title
        p = pages[0]
        pages.append({**p, "url": p["url"].replace("docs.", "mirror."), "near_duplicate_of": p["url"],
                      "html": p["html"].replace("</h1>", " (mirror)</h1>", 1)})
    return pages


def write_warc(path: Path, pages: list[dict], broken: bool = True) -> Path:
    """A WARC file (gzip per record when the name ends in .gz) written with fastwarc: a warcinfo
    record, a request and a response record per page; with `broken`, also a PDF response, a
    response of undecodable bytes, a Latin-1 page and, last, a response cut short."""
    from fastwarc.stream_io import GzipWriter
    from fastwarc.warc import WarcRecord, WarcRecordType

    def record(rtype, url: str, payload: bytes, ctype: str) -> WarcRecord:
        r = WarcRecord()
        r.init_headers(record_type=rtype)
        r.headers["WARC-Target-URI"] = url
        r.headers["WARC-Date"] = "2024-05-01T12:00:00Z"
        r.headers["Content-Type"] = ctype
        r.set_bytes_content(payload)
        return r

    def response(url: str, body: bytes, ctype: str) -> WarcRecord:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        return record(WarcRecordType.response, url, head + body, "application/http; msgtype=response")

    recs = [record(WarcRecordType.warcinfo, "", b"software: llmray.testing\r\n", "application/warc-fields")]
    for p in pages:
        req = f"GET {p['url']} HTTP/1.1\r\nHost: example\r\n\r\n".encode()
        recs.append(record(WarcRecordType.request, p["url"], req, "application/http; msgtype=request"))
        recs.append(response(p["url"], p["html"].encode(p.get("charset", "utf-8")),
                             f"text/html; charset={p.get('charset', 'utf-8')}"))
    if broken:
        recs.append(response("https://files.example.org/report.pdf", b"%PDF-1.4 binary", "application/pdf"))
        recs.append(response("https://bad.example.org/noise", bytes(range(128, 256)) * 8,
                             "text/html; charset=utf-8"))
    path = Path(path)
    gz = path.name.endswith(".gz")
    with open(path, "wb") as f:
        for r in recs:
            if gz:
                w = GzipWriter(f)
                r.write(w)
                w.finish()
            else:
                r.write(f)
        if broken:  # a last record cut in the middle of its body, as a crawl interrupted mid-write
            import io

            buf = io.BytesIO()
            response("https://cut.example.org/page", pages[0]["html"].encode() * 2, "text/html").write(buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


MIT_TEXT = """MIT License

Copyright (c) 2024 Example Authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
"""
APACHE_HEAD = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/

   TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

   1. Definitions.

      "License" shall mean the terms and conditions for use, reproduction,
      and distribution as defined by Sections 1 through 9 of this document.
"""
GPL3_HEAD = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.

                            Preamble

  The GNU General Public License is a free, copyleft license for
software and other kinds of works.
"""


def _code_files() -> dict[str, bytes]:
    """Files every test repository holds: real stdlib source, docs, and the files The Stack rules remove."""
    import inspect
    import textwrap

    js_min = "function f(a,b){return a+b};" * 120  # one 3480-character line
    bundle = "\n".join(f"var v{i}=" + "[" + ",".join(str(j) for j in range(60)) + "];" for i in range(20))
    return {
        "src/wrap.py": inspect.getsource(textwrap).encode(),
        "README.md": b"# Example\n\nA small library used to test repository ingestion.\n",
        "node_modules/leftpad/index.js": b"module.exports = function leftpad(s, n) { return s.padStart(n); };\n",
        "static/app.min.js": js_min.encode(),
        "static/bundle.js": bundle.encode(),
        "src/api_pb2.py": b"# Protocol buffer stub\nDESCRIPTOR = None\n",
        "src/schema.py": b"# Code generated by schemagen. DO NOT EDIT.\nSCHEMA = {}\n",
        "data/sample.json": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)),
        "docs/logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    }


# The rule each of `_code_files` trips (None: kept), as `code_filter` reasons.
CODE_FILE_RULES = {"src/wrap.py": None, "README.md": None, "node_modules/leftpad/index.js": "vendored",
                   "static/app.min.js": "generated", "static/bundle.js": "minified", "src/api_pb2.py": "generated",
                   "src/schema.py": "generated", "data/sample.json": "binary", "docs/logo.png": "unknown_extension"}


def write_repos(root: Path) -> dict[str, str | None]:
    """Repositories with different licences under `root`: Git work trees (mit, apache, gpl3), a plain
    folder without a licence, and archives (.tar.gz of an MIT repo under one top folder, .zip of an
    Apache one). Returns {repository name: expected SPDX id or None}."""
    import io
    import subprocess
    import tarfile
    import zipfile

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = _code_files()
    licences = {"mit": ("LICENSE", MIT_TEXT, "MIT"), "apache": ("LICENSE.txt", APACHE_HEAD, "Apache-2.0"),
                "gpl3": ("COPYING", GPL3_HEAD, "GPL-3.0"), "nolicense": (None, None, None)}
    for name, (lic_name, lic_text, _) in licences.items():
        d = root / name
        for rel, data in {**files, **({lic_name: lic_text.encode()} if lic_name else {})}.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        if name != "nolicense":
            env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                   "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": str(root), "PATH": "/usr/bin:/bin"}
            for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
                subprocess.run(["git", "-C", str(d), *cmd], check=True, env=env, capture_output=True)
            (d / "untracked.py").write_text("print('not committed')\n")  # not in `git ls-files`
    with tarfile.open(root / "mit-archive.tar.gz", "w:gz") as tf:
        for rel, data in {**files, "LICENSE": MIT_TEXT.encode()}.items():
            info = tarfile.TarInfo(f"mit-archive-1.0/{rel}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "apache-archive.zip", "w") as zf:
        for rel, data in {**files, "LICENSE": APACHE_HEAD.encode()}.items():
            zf.writestr(rel, data)
    return {**{k: v[2] for k, v in licences.items()}, "mit-archive": "MIT", "apache-archive": "Apache-2.0"}


def write_web_assets(folder: Path) -> Path:
    """examples/web.yaml's inputs: two crawl files (`crawl/*.warc.gz`, with the broken records of
    `write_warc`) and a URL block list naming the mirror that serves a near-duplicate page."""
    folder = Path(folder)
    (folder / "crawl").mkdir(parents=True, exist_ok=True)
    pages = web_pages()
    write_warc(folder / "crawl" / "part-0.warc.gz", pages[: len(pages) // 2], broken=False)
    write_warc(folder / "crawl" / "part-1.warc.gz", pages[len(pages) // 2:], broken=True)
    (folder / "blocklist.txt").write_text("# domains and URL prefixes never to train on\nads.example.com\n"
                                          "https://fr.example.net/article/1\n")
    return folder


if __name__ == "__main__":  # python -m llmray.testing {byo|rlvr|web} <folder>: an example's offline inputs
    import sys

    makers = {"byo": write_byo_assets, "rlvr": write_rlvr_assets, "web": write_web_assets}
    if len(sys.argv) != 3 or sys.argv[1] not in makers:
        sys.exit("usage: python -m llmray.testing {byo|rlvr|web} <folder>")
    print(makers[sys.argv[1]](Path(sys.argv[2])))
