"""Web collection in the curate stage: WARC reading (fastwarc), URL lists, HTML main-text extraction
(trafilatura, resiliparse), language identification (py3langid) and per-language Gopher stop words.

Pages are built by `llmray.testing.web_pages` (stdlib documentation and sentences in seven languages
inside navigation, cookie-banner, advert and footer boilerplate) and written to WARC files with
fastwarc's writer, with a PDF, an undecodable and a cut record. Unit tests run without Ray; one test
runs examples/web.yaml (WARC -> curate -> tokenizer) on a local Ray.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmray.curate.config import (
    CleanConfig,
    ExtractConfig,
    GopherQualityConfig,
    LanguageConfig,
    UrlFilterConfig,
)
from llmray.testing import BOILERPLATE, SENTENCES, web_pages, write_warc

ROOT = Path(__file__).resolve().parents[1]


def _read(path: Path, **options) -> list[dict]:
    from llmray.curate.readers import read_task

    task = {"source_idx": 0, "source": "web", "type": "warc", "text_field": "text", "id_field": None,
            "limit": None, "task_idx": 0, "files": [(str(path), path.name)], "html_only": True, **options}
    rows = []
    for b in read_task(task, CleanConfig(), True, 64):
        rows.extend({k: b[k][i] for k in b} for i in range(len(b["id"])))
    return rows


def _batch(texts: list[str], source: str = "web") -> dict:
    n = len(texts)
    obj = lambda vals: np.array(vals, dtype=object)  # noqa: E731
    return {"id": obj([f"d{i}" for i in range(n)]), "text": obj(texts), "source": obj([source] * n),
            "_drop": obj([""] * n), "_why": obj([""] * n), "_edits": obj([""] * n)}


@pytest.fixture(scope="module")
def pages():
    return web_pages()


def test_warc_reader_keeps_html_responses_with_metadata_and_quarantines_broken_records(tmp_path, pages):
    plain = write_warc(tmp_path / "crawl.warc", pages)
    rows = _read(plain)
    # warcinfo and request records are not documents; every response record is one row.
    assert len(rows) == len(pages) + 3
    kept = [r for r in rows if r["_drop"] == ""]
    assert [json.loads(r["meta"])["url"] for r in kept] == [p["url"] for p in pages]
    meta = json.loads(kept[0]["meta"])
    assert meta["record_id"].startswith("<urn:uuid:") and kept[0]["id"] == meta["record_id"]
    assert meta["timestamp"].startswith("2024-05-01T12:00:00") and meta["charset"] == "utf-8"
    assert meta["content_type"] == "text/html" and kept[0]["text"].startswith("<!DOCTYPE html>")
    why = Counter((r["_drop"], r["_why"].split(":")[0]) for r in rows if r["_drop"])
    assert why == {("extract", "not_html"): 1, ("quarantine", "undecodable_bytes"): 1,
                   ("quarantine", "truncated"): 1}
    # gzip per record (as Common Crawl): the cut record breaks the gzip stream -> unreadable_file
    # after every record before it was read.
    rows_gz = _read(write_warc(tmp_path / "crawl.warc.gz", pages))
    assert sum(r["_drop"] == "" for r in rows_gz) == len(pages)
    assert [r["_why"].split(":")[0] for r in rows_gz if r["_drop"] == "quarantine"] == \
        ["undecodable_bytes", "unreadable_file"]


def test_warc_from_a_uri(tmp_path, pages):
    """Object-store style URIs go through pyarrow.fs like the other readers (file:// here; s3:// alike)."""
    from llmray.curate.readers import read_task
    from llmray.curate.sources import expand_paths

    write_warc(tmp_path / "a.warc.gz", pages[:3], broken=False)
    refs = expand_paths([f"file://{tmp_path}/*.warc.gz"], "warc")
    assert [r.uri for r in refs] == [f"file://{tmp_path}/a.warc.gz"]
    task = {"source_idx": 0, "source": "web", "type": "warc", "limit": None, "task_idx": 0,
            "text_field": "text", "id_field": None, "files": [(refs[0].uri, refs[0].relpath)]}
    rows = [t for b in read_task(task, CleanConfig(), True, 64) for t in b["text"]]
    assert len(rows) == 3 and all(t.rstrip().endswith("</html>") for t in rows)


def test_warc_from_s3(tmp_path, pages, s3_endpoint, monkeypatch):
    """A .warc.gz on an S3-compatible store (moto, on 127.0.0.1; endpoint from AWS_ENDPOINT_URL, as a
    user of MinIO sets it), found by a glob, reads into the same rows as the local file."""
    from llmray.curate.readers import read_task
    from llmray.curate.sources import expand_paths

    endpoint, fs = s3_endpoint
    for k, v in {"AWS_ENDPOINT_URL": f"http://{endpoint}", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(k, v)
    local = write_warc(tmp_path / "crawl.warc.gz", pages[:5])  # + PDF, undecodable, and a cut gzip member
    fs.create_dir("crawls")
    with fs.open_output_stream("crawls/cc/crawl.warc.gz", compression=None) as f:  # bytes as they are
        f.write(local.read_bytes())
    (ref,) = expand_paths(["s3://crawls/cc/*.warc.gz"], "warc")
    assert ref.uri == "s3://crawls/cc/crawl.warc.gz"

    def rows(u, rel):
        task = {"source_idx": 0, "source": "web", "type": "warc", "limit": None, "task_idx": 0, "text_field": "text",
                "id_field": None, "files": [(u, rel)], "html_only": True}
        return [{k: b[k][i] for k in b} for b in read_task(task, CleanConfig(), True, 64) for i in range(len(b["id"]))]

    got = rows(ref.uri, ref.relpath)
    assert got == rows(str(local), "crawl.warc.gz")
    assert [r["_drop"] or "kept" for r in got] == ["kept"] * 5 + ["extract", "quarantine", "quarantine"]
    # The endpoint in the URI's query instead (pyarrow.fs options): not a glob; every file found keeps it.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    query = f"?endpoint_override={endpoint}&scheme=http"
    (qref,) = expand_paths([f"s3://crawls/cc/*.warc.gz{query}"], "warc")
    assert (qref.uri, qref.relpath) == (ref.uri + query, ref.relpath)
    assert rows(qref.uri, qref.relpath) == got
    # The stage's fingerprint follows what the glob lists (not "missing"), and a new file changes it.
    from llmray.fingerprint import InputDigests

    glob_uri = f"s3://crawls/cc/*.warc.gz{query}"
    before = InputDigests(None).digest(glob_uri)
    assert before not in ("missing", "") and before == InputDigests(None).digest(glob_uri)
    assert InputDigests(None).digest(f"s3://crawls/nothing/*.warc.gz{query}") == "missing"
    with fs.open_output_stream("crawls/cc/more.warc.gz", compression=None) as f:
        f.write(local.read_bytes())
    assert InputDigests(None).digest(glob_uri) != before


def test_warc_charset_from_http_header(tmp_path):
    page = {"url": "https://fr.example.net/latin1", "charset": "iso-8859-1",
            "html": "<html><body><p>Élève déjà à l'école, où l'été est chaud.</p></body></html>"}
    rows = _read(write_warc(tmp_path / "l1.warc", [page], broken=False))
    assert "Élève déjà à l'école" in rows[0]["text"] and json.loads(rows[0]["meta"])["charset"] == "iso-8859-1"


def test_response_without_an_http_message_is_quarantined_bad_http(tmp_path):
    """A complete response record whose block is not an HTTP message (bare HTML, no HTTP headers)."""
    from fastwarc.warc import WarcRecord, WarcRecordType

    r = WarcRecord()
    r.init_headers(record_type=WarcRecordType.response)
    r.headers["WARC-Target-URI"] = "https://bare.example.net/"
    r.headers["Content-Type"] = "text/html"  # not application/http: fastwarc parses no HTTP headers
    r.set_bytes_content(b"<html><body><p>no status line</p></body></html>")
    with open(tmp_path / "bare.warc", "wb") as f:
        r.write(f)
    (row,) = _read(tmp_path / "bare.warc")
    assert row["_drop"] == "quarantine" and row["_why"].startswith("bad_http: record ")
    assert "(https://bare.example.net/): HTTP headers not parsed, 47 of 47 bytes" in row["_why"]
    assert row["text"].startswith("<html><body>")


def test_url_block_and_allow_lists(tmp_path, pages):
    from llmray.curate.warc import UrlLists

    (tmp_path / "block.txt").write_text("# blocked\nde.example.net\nhttps://docs.example.org/library/os\n")
    (tmp_path / "allow.txt").write_text("example.net\ndocs.example.org\n")
    lists = UrlLists([str(tmp_path / "block.txt")], [str(tmp_path / "allow.txt")])
    assert lists.reason("https://de.example.net/article/0") == "blocked_url: de.example.net"
    assert lists.reason("https://sub.de.example.net/x") == "blocked_url: de.example.net"
    assert lists.reason("https://docs.example.org/library/os.html").startswith("blocked_url: https://docs")
    assert lists.reason("https://mirror.example.org/library/json.html").startswith("not_allowed")
    assert lists.reason("https://fr.example.net/article/0") is None
    cfg = UrlFilterConfig(block_lists=[str(tmp_path / "block.txt")]).model_dump()
    rows = _read(write_warc(tmp_path / "c.warc", pages, broken=False), url_filter=cfg)
    blocked = [json.loads(r["meta"])["url"] for r in rows if r["_drop"] == "url_filter"]
    assert blocked == [p["url"] for p in pages if "de.example.net" in p["url"] or "/library/os." in p["url"]]


def _raw_response(path: Path, url: str, body: bytes) -> None:
    """A WARC file with one text/html; charset=utf-8 response record holding `body` as given."""
    from fastwarc.warc import WarcRecord, WarcRecordType

    r = WarcRecord()
    r.init_headers(record_type=WarcRecordType.response)
    r.headers["WARC-Target-URI"] = url
    r.headers["Content-Type"] = "application/http; msgtype=response"
    r.set_bytes_content(b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + body)
    with open(path, "wb") as f:
        r.write(f)


def test_warc_rows_of_every_outcome_with_meta_as_json_dumps_writes_it(tmp_path, pages):
    """Every outcome of a WARC record through the read task, with the `extract` operator it applies per
    batch (as the plan runs it, into Arrow blocks): URL blocked, not HTML, no main content, too short, kept (UTF-8, Latin-1,
    repaired bytes), undecodable, truncated, unreadable gzip file; the meta column (built by hand per
    record for speed) is byte for byte what json.dumps(meta, ensure_ascii=False) writes."""
    import pyarrow as pa

    from llmray.curate.readers import read_task
    from llmray.curate.sources import ROW_COLUMNS

    odd = [{"url": 'https://fr.example.net/"quoted"/é?x=1', "charset": "iso-8859-1",
            "html": "<html><body><article><p>" + " ".join(SENTENCES["fr"]) + "</p></article></body></html>"},
           {"url": "https://empty.example.net/", "html": "<html><head><title>t</title></head><body></body></html>"}]
    write_warc(tmp_path / "a.warc", pages + odd)  # + PDF, undecodable and cut records
    write_warc(tmp_path / "b.warc.gz", pages[:4])  # + PDF, undecodable; the cut record breaks the gzip stream
    _raw_response(tmp_path / "c.warc", "https://fix.example.net/",  # one invalid UTF-8 byte: repaired, counted
                  b"<html><body><p>" + b"mostly fine text " * 30 + b"\xff</p></body></html>")
    (tmp_path / "block.txt").write_text("de.example.net\n")
    task = {"source_idx": 0, "source": "web", "type": "warc", "text_field": "text", "id_field": None, "limit": None,
            "task_idx": 0, "files": [(str(tmp_path / f), f) for f in ("a.warc", "b.warc.gz", "c.warc")],
            "html_only": True, "url_filter": UrlFilterConfig(block_lists=[str(tmp_path / "block.txt")]).model_dump(),
            "extract": ExtractConfig(extractor="resiliparse", min_chars=300).model_dump(), "sample_chars": 100}
    schema = pa.schema([(c, pa.int64() if c in ("_line", "_ord") else pa.string()) for c in ROW_COLUMNS])
    rows = []
    for b in read_task(task, CleanConfig(), True, 16):  # extraction runs in the read task, per batch
        rows.extend(pa.Table.from_pydict(b, schema=schema).to_pylist())
    why = Counter((r["_drop"], r["_why"].split(":")[0]) for r in rows if r["_drop"])
    assert why == {("url_filter", "blocked_url"): 2, ("extract", "not_html"): 2, ("extract", "no_content"): 1,
                   ("extract", "too_short"): 2, ("quarantine", "undecodable_bytes"): 2,
                   ("quarantine", "truncated"): 1, ("quarantine", "unreadable_file"): 1}
    kept = [r for r in rows if r["_drop"] == ""]
    assert kept and [r["_edits"] for r in kept if r["_edits"]] == ["utf8_repaired=1"]
    metas = [r["meta"] for r in rows if r["_drop"] != "quarantine"]
    assert all(m == json.dumps(json.loads(m), ensure_ascii=False) for m in metas)
    assert [list(json.loads(m)) for m in metas[:1]] == [["url", "timestamp", "record_id", "content_type", "charset"]]
    quoted = json.loads(next(r["meta"] for r in kept if "quoted" in r["meta"]))
    assert quoted["url"] == odd[0]["url"] and quoted["charset"] == "iso-8859-1"
    assert all(r["meta"] == "" for r in rows if r["_drop"] == "quarantine")


def test_url_lists_resolve_on_the_driver(tmp_path, monkeypatch):
    """Lists are made absolute before the read tasks (Ray workers have another working directory); a
    missing list fails at planning, naming the field."""
    from llmray.curate.sources import read_options
    from llmray.stages.curate import Config

    (tmp_path / "block.txt").write_text("ads.example.com\n")
    monkeypatch.chdir(tmp_path)
    cfg = Config(sources=[{"type": "warc", "path": "*.warc"}], url_filter={"block_lists": ["block.txt"]})
    assert read_options(cfg)["warc"]["url_filter"]["block_lists"] == [str(tmp_path / "block.txt")]
    cfg = Config(sources=[{"type": "warc", "path": "*.warc"}], url_filter={"allow_lists": ["nope.txt"]})
    with pytest.raises(FileNotFoundError, match="url_filter.allow_lists"):
        read_options(cfg)
    no_web = Config(sources=[{"type": "python-docs"}], url_filter={"allow_lists": ["nope.txt"]})
    assert read_options(no_web)["warc"]["url_filter"] is None  # not active without a warc source


@pytest.mark.parametrize("extractor, max_boilerplate", [("trafilatura", 0.05), ("resiliparse", 0.20)])
def test_extraction_quality_per_extractor(pages, extractor, max_boilerplate):
    """Word F1 against the planted main text >= 0.9; boilerplate words kept: trafilatura <= 5%;
    resiliparse keeps the advert column of the short div-layout pages (figure in docs/stages/curate.md)."""
    from llmray.curate.extract import boilerplate_kept, make_extractor, word_f1

    run = make_extractor(extractor, {})
    boiler = " ".join(BOILERPLATE.values())
    outs = [run(p["html"]) for p in pages]
    f1 = np.mean([word_f1(o, p["main"]) for o, p in zip(outs, pages)])
    kept = np.mean([boilerplate_kept(o, boiler, p["main"]) for o, p in zip(outs, pages)])
    print(f"{extractor}: word F1 {f1:.3f}, boilerplate words kept {kept:.3f}")
    assert f1 >= 0.9 and kept <= max_boilerplate
    assert all("\n" in o for o in outs)  # paragraphs stay separate blocks


def test_extract_operator_drops_short_pages_and_checks_options():
    from llmray.curate.extract import check_options, op_extract

    long = "<html><body><article><p>" + " ".join(SENTENCES["en"]) + "</p></article></body></html>"
    short = "<html><body><p>Too short.</p></body></html>"
    batch = _batch([long, short, "not html, another source"])
    batch["source"][2] = "other"
    out = op_extract(batch, ExtractConfig(extractor="resiliparse", min_chars=200), ["web"], 2000)
    assert list(out["_drop"]) == ["", "extract", ""]
    assert out["_why"][1].startswith("too_short: 10 characters < 200")
    assert out["text"][0].startswith("The river flows") and out["text"][2] == "not html, another source"
    check_options("trafilatura", {"favor_precision": True})
    check_options("resiliparse", {"main_content": True, "list_bullets": False})
    with pytest.raises(ValueError, match="favour_precision"):
        check_options("trafilatura", {"favour_precision": True})


def test_language_id_accuracy_and_kept_set(pages):
    """Accuracy >= 0.95 at the documented min_score (0.65) on the extracted pages and on single sentences;
    the operator keeps exactly the `languages:` asked for."""
    from llmray.curate.extract import classify, make_extractor, op_language

    run = make_extractor("trafilatura", {})
    texts = [run(p["html"]) for p in pages]
    cfg = LanguageConfig(enabled=True)
    labels = [classify(t) for t in texts]
    acc = np.mean([lang == p["lang"] and score >= cfg.min_score for (lang, score), p in zip(labels, pages)])
    sents = [(lang, s) for lang, ss in SENTENCES.items() for s in ss]
    acc_s = np.mean([classify(s)[0] == lang and classify(s)[1] >= cfg.min_score for lang, s in sents])
    print(f"language ID accuracy: pages {acc:.3f} ({len(pages)}), sentences {acc_s:.3f} ({len(sents)})")
    assert acc >= 0.95 and acc_s >= 0.95
    out = op_language(_batch(texts), LanguageConfig(enabled=True, languages=["en", "de"]), 2000)
    kept = {p["lang"] for p, d in zip(pages, out["_drop"]) if d == ""}
    assert kept == {"en", "de"}
    assert all(d == "language" for p, d in zip(pages, out["_drop"]) if p["lang"] not in ("en", "de"))
    assert list(out["language"]) == [lang for lang, _ in labels] and (out["language_score"] > 0.65).all()


def test_gopher_stop_words_follow_the_language():
    from llmray.curate.filters import gopher_quality

    cfg = GopherQualityConfig(min_words=10)
    de = " ".join(SENTENCES["de"])
    assert gopher_quality(de, cfg).startswith("gopher_stop_words: 0 en")  # English list on German text
    assert gopher_quality(de, cfg, "de") is None
    assert gopher_quality(" ".join(SENTENCES["en"]), cfg, "en") is None
    fi = "Joki virtaa hitaasti vanhan kaupungin läpi ja lapset leikkivät sen rannoilla kesällä aina."
    assert gopher_quality(fi, cfg).startswith("gopher_stop_words")
    assert gopher_quality(fi, cfg, "fi") is None  # no Finnish list: the rule is skipped


def test_web_example_warc_to_tokenizer(ray_local, tmp_path, monkeypatch):
    """examples/web.yaml as a user runs it: crawl files -> curated corpus -> BPE tokenizer."""
    import pyarrow.parquet as pq

    from llmray.pipeline import load_pipeline
    from llmray.runner import run_pipeline
    from llmray.testing import write_web_assets

    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("web", "byo", "rlvr"))
    write_web_assets(tmp_path / "examples" / "web")
    monkeypatch.chdir(tmp_path)
    run_pipeline(load_pipeline(Path("examples/web.yaml")), echo=lambda *_: None)
    out = tmp_path / "runs" / "web" / "pages"
    m = json.loads((out / "manifest.json").read_text())["metrics"]
    ops = [f["op"] for f in m["funnel"]]
    assert ops[:4] == ["url_filter", "extract", "clean", "language"] and "license" not in ops
    assert m["docs_in"] == m["docs_out"] + sum(m["removed"].values()) + m["quarantined"]
    assert m["removed"]["url_filter"] == 1 and m["reasons"]["extract"] == {"not_html": 1}
    assert m["reasons"]["language"]["other_language"] >= 9 and m["removed"]["near_dedup"] == 1
    assert m["reasons"]["quarantine"] == {"undecodable_bytes": 1, "unreadable_file": 1}
    data = pq.read_table(out / "data").to_pylist()
    assert data and {r["language"] for r in data} <= {"en", "de"}
    assert all(r["language_score"] >= 0.65 for r in data)
    metas = [json.loads(r["meta"]) for r in data]
    assert all(m_["url"].startswith("https://") and m_["record_id"].startswith("<urn:") for m_ in metas)
    for r in data:  # no navigation, banner, advert or footer line survived
        assert not any(b in r["text"] for b in BOILERPLATE.values())
    quarantine = [json.loads(x) for x in (out / "quarantine" / "crawl.jsonl").read_text().splitlines()]
    assert {q["reason"] for q in quarantine} == {"undecodable_bytes", "unreadable_file"}
    assert (tmp_path / "runs" / "web" / "bpe" / "manifest.json").is_file()
