"""Unit tests of the curate building blocks (no Ray): MinHash, banding, filters, cleaning, readers,
dedup shard logic, decontamination index, classifier."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from llmray.curate import clean as C
from llmray.curate import filters as F
from llmray.curate import minhash as MH
from llmray.curate.config import (
    C4Config,
    ClassifierConfig,
    CleanConfig,
    EvalSetConfig,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    NearDedupConfig,
    PiiConfig,
    SourceConfig,
)

PROSE = ("The function returns the number of items that have been stored in the queue. It blocks until an "
         "item is available when the queue is empty, and it raises an error when the timeout expires. The "
         "caller owns the returned object and may modify it freely without affecting the queue itself.")


# ---------------------------------------------------------------- MinHash


@pytest.mark.parametrize("num_perm,seed", [(64, 7), (256, 1), (128, 0)])
def test_permutations_are_datasketch_s(num_perm, seed):
    from datasketch import MinHash

    a, b = MH.permutations(num_perm, seed)
    ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    assert a.dtype == b.dtype == np.uint32
    assert np.array_equal(a, ref[0]) and np.array_equal(b, ref[1]) and (a % 2 == 1).all()


def test_signatures_bit_identical_to_datasketch():
    from datasketch import MinHash

    texts = [PROSE, "short text", "", "one two three four five six seven", PROSE.upper() + " extra words here"]
    sig, counts = MH.signatures(texts, num_perm=64, ngram=3, seed=7, hash_kind="datasketch")
    for t, s, c in zip(texts, sig, counts):
        m = MinHash(num_perm=64, seed=7)
        shingles = MH.word_shingles(t, 3)
        for sh in shingles:
            m.update(sh.encode("utf-8"))
        assert c == len(shingles)
        assert np.array_equal(m.hashvalues.astype(np.uint32), s)


def test_fast_signatures_estimate_jaccard_and_match_per_doc():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    a = [rng.choice(vocab) for _ in range(400)]
    b = a[:300] + [rng.choice(vocab) for _ in range(100)]
    ta, tb = " ".join(a), " ".join(b)
    sig, _ = MH.signatures([ta, tb, ta], num_perm=256, ngram=5)
    assert np.array_equal(sig[0], sig[2])  # same text, same signature within one batch
    alone, _ = MH.signatures([tb], num_perm=256, ngram=5)
    assert np.array_equal(alone[0], sig[1])  # independent of the batch it is in
    sa, sb = set(MH.word_shingles(ta, 5)), set(MH.word_shingles(tb, 5))
    true_j = len(sa & sb) / len(sa | sb)
    est = MH.estimated_jaccard(sig[:1], sig[1:2])[0]
    assert abs(est - true_j) < 4 * MH.jaccard_std(true_j, 256)


def test_huge_document_is_chunked():
    words = " ".join(f"w{i}" for i in range(60_000))
    sig, counts = MH.signatures([words, "a b c d e f"], num_perm=32, ngram=5)
    assert counts[0] == 60_000 - 4 and sig.shape == (2, 32)
    ref, _ = MH.signatures([words], num_perm=32, ngram=5)
    assert np.array_equal(ref[0], sig[0])


def test_choose_bands_reaches_recall_and_datasketch_default_does_not():
    b, r = MH.choose_bands(256, 0.8, 0.995)
    assert b * r <= 256
    assert MH.candidate_probability(0.8, b, r) >= 0.995
    assert MH.candidate_probability(0.5, b, r) < 0.5
    from datasketch.lsh import _optimal_param

    db, dr = _optimal_param(0.8, 128, 0.5, 0.5)
    assert MH.candidate_probability(0.8, db, dr) < 0.9  # why the stage picks its own banding


def test_near_dedup_config_validation():
    with pytest.raises(ValueError):
        NearDedupConfig(bands=10)
    with pytest.raises(ValueError):
        NearDedupConfig(bands=40, rows=8, num_perm=256)


# ---------------------------------------------------------------- filters


def test_gopher_quality_rules():
    cfg = GopherQualityConfig()
    assert F.gopher_quality(PROSE * 2, cfg) is None
    assert F.gopher_quality("too short to keep", cfg).startswith("gopher_short_doc")
    assert F.gopher_quality("# " * 60 + PROSE, cfg).startswith("gopher_hash_ratio")
    no_stop = " ".join(["quick brown foxes jump over lazy dogs"] * 10)
    assert F.gopher_quality(no_stop, cfg).startswith("gopher_stop_words")
    assert F.gopher_quality(PROSE, GopherQualityConfig(min_words=None, min_stop_words=None)) is None


def test_gopher_repetition_rules():
    cfg = GopherRepetitionConfig()
    assert F.gopher_repetition(PROSE, cfg) is None
    assert F.gopher_repetition("\n".join(["the same line again"] * 10 + [PROSE]), cfg).startswith("gopher_dup_line")
    spam = " ".join(["buy cheap watches now"] * 40)
    assert F.gopher_repetition(spam, cfg) is not None


def test_fineweb_and_c4():
    assert F.fineweb(PROSE, FineWebConfig()) is None
    listy = "\n".join(f"item {i}" for i in range(30))
    assert F.fineweb(listy, FineWebConfig()).startswith("fineweb_")
    text, reason = F.c4((PROSE + " " + PROSE).replace(". ", ".\n") + "\nMenu\nAccept cookies. We use cookies here.", C4Config())
    assert reason is None and "Menu" not in text and "cookies" not in text
    assert F.c4("We write it as f(x) { return x; } here.\n" + PROSE, C4Config())[1] == "c4_curly_bracket"


# ---------------------------------------------------------------- cleaning, PII


def test_decode_and_clean():
    assert C.decode(b"caf\xc3\xa9", 0.05) == ("café", 0)
    text, bad = C.decode(b"x" * 100 + b"\xff", 0.05)
    assert text.endswith("\ufffd") and bad == 1
    assert C.decode(bytes(range(128, 256)), 0.05)[0] is None
    out, edits = C.clean_text("Cafe\u0301\r\nline  \t\n\n\n\n\nnext\x07 end\u00a0x", CleanConfig())
    assert out == "Café\nline\n\n\nnext end x" and edits == {"control_chars": 1, "unicode_normalized": 1}
    assert C.sanitize("a\ud800b") == ("a\ufffdb", 1)


def test_pii_redaction():
    text, counts = C.redact_pii("mail a.b@example.org, call +1 415-555-0132, host 8.8.8.8, local 10.0.0.1, "
                                "slice x[1::2], date 2023-01-15", PiiConfig(enabled=True))
    assert "<EMAIL>" in text and "<PHONE>" in text and "<IP_ADDRESS>" in text
    assert "10.0.0.1" in text and "x[1::2]" in text and "2023-01-15" in text
    assert counts == {"pii_emails": 1, "pii_phones": 1, "pii_ips": 1}


def test_boilerplate_lines():
    keys = C.line_keys("Copyright 2024 Example Corp. All rights reserved.\nshort\nreal content line here ok", 20)
    assert len(keys) == 2
    boiler = frozenset(list(C.line_keys("Copyright 2024 Example Corp. All rights reserved.", 20)))
    out, n = C.strip_lines("Body text stays.\nCopyright 2024 Example Corp.  All rights reserved.", boiler, 20)
    assert out == "Body text stays." and n == 1


# ---------------------------------------------------------------- sources and readers


def _rows(task, tmp_path):
    from llmray.curate.readers import read_task

    out = {}
    for b in read_task(task, CleanConfig(), True, 100):
        for k, v in b.items():
            out.setdefault(k, []).extend(v)
    return out


def test_jsonl_reader_quarantines_with_reasons(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    lines = [json.dumps({"id": "x", "text": "good one", "lang": "en"}).encode(), b"{not json", b"[1, 2]",
             json.dumps({"body": "no text"}).encode(), json.dumps({"text": 5}).encode(), b"",
             bytes(range(128, 200)), json.dumps({"text": "caf\udce9"}).encode()]
    p.write_bytes(gzip.compress(b"\n".join(lines)))
    task = {"source_idx": 1, "task_idx": 3, "source": "web", "type": "jsonl", "text_field": "text",
            "id_field": "id", "limit": None, "files": [[str(p), "a.jsonl.gz"]]}
    rows = _rows(task, tmp_path)
    assert rows["_drop"] == ["", "quarantine", "quarantine", "quarantine", "quarantine", "quarantine", ""]
    reasons = [w.split(":")[0] for w in rows["_why"]]
    assert reasons[1:6] == ["bad_json", "wrong_type", "missing_field", "wrong_type", "undecodable_bytes"]
    assert rows["_line"] == [1, 2, 3, 4, 5, 7, 8]
    assert rows["id"][0] == "x" and json.loads(rows["meta"][0]) == {"lang": "en"}
    assert rows["text"][6] == "caf\ufffd" and rows["_edits"][6] == "utf8_repaired=1"
    assert rows["_ord"][0] == (1 << 55) | (3 << 31) and rows["_ord"][1] == rows["_ord"][0] + 1


def test_parquet_and_text_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a doc", None, "b doc"], "n": [1, 2, 3]}), tmp_path / "x.parquet")
    pq.write_table(pa.table({"content": [1, 2]}), tmp_path / "bad.parquet")
    (tmp_path / "t.txt").write_text("hello file")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    task = {"source_idx": 0, "task_idx": 0, "source": "pq", "type": "parquet", "text_field": "content",
            "id_field": None, "limit": None,
            "files": [[str(tmp_path / f), f] for f in ("x.parquet", "bad.parquet", "junk.parquet")]}
    rows = _rows(task, tmp_path)
    assert rows["_drop"] == ["", "quarantine", "", "quarantine", "quarantine", "quarantine"]
    assert [w.split(":")[0] for w in rows["_why"][3:]] == ["wrong_type", "wrong_type", "unreadable_file"]
    assert rows["id"][0] == "pq/x.parquet:1"
    task = {**task, "type": "text", "files": [[str(tmp_path / "t.txt"), "t.txt"]]}
    assert _rows(task, tmp_path)["text"] == ["hello file"]


def test_limit_reads_first_records_in_order(tmp_path):
    from llmray.curate.sources import plan_reads

    for i in range(3):
        (tmp_path / f"f{i}.jsonl").write_text("".join(json.dumps({"text": f"{i}-{j}"}) + "\n" for j in range(4)))
    src = SourceConfig(type="jsonl", path=str(tmp_path / "*.jsonl"), limit=6)
    tasks = plan_reads([src], ["s"])
    assert len(tasks) == 1
    assert _rows(tasks[0], tmp_path)["text"] == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1"]
    assert len(plan_reads([SourceConfig(type="jsonl", path=str(tmp_path))], ["s"])) == 3
    with pytest.raises(FileNotFoundError):
        plan_reads([SourceConfig(type="jsonl", path=str(tmp_path / "nope*.jsonl"))], ["s"])


def test_uri_globs_and_directories(tmp_path):
    from llmray.curate.sources import expand_paths, iter_lines

    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl", "b.jsonl.gz", "sub/c.jsonl", "notes.md"):
        (tmp_path / name).write_bytes(gzip.compress(b'{"text": "x"}\n') if name.endswith(".gz") else b'{"text": "x"}\n')
    uri = f"file://{tmp_path}"
    assert [r.relpath for r in expand_paths([uri + "/*.jsonl*"], "jsonl")] == ["a.jsonl", "b.jsonl.gz"]
    assert [r.relpath for r in expand_paths([uri + "/**/*.jsonl"], "jsonl")] == ["a.jsonl", "sub/c.jsonl"]
    refs = expand_paths([uri], "jsonl")
    assert [r.relpath for r in refs] == ["a.jsonl", "b.jsonl.gz", "sub/c.jsonl"]
    assert list(iter_lines(refs[1].uri)) == [(1, b'{"text": "x"}')]
    assert [r.relpath for r in expand_paths([str(tmp_path / "**" / "*.jsonl")], "jsonl")] == ["a.jsonl", "sub/c.jsonl"]


def test_source_config_validation():
    with pytest.raises(ValueError):
        SourceConfig(type="python-docs", path="x")
    with pytest.raises(ValueError):
        SourceConfig(type="jsonl")
    with pytest.raises(ValueError):
        SourceConfig(type="jsonl", path="x", include_source=True)


# ---------------------------------------------------------------- dedup logic (shard classes, no Ray)


def test_key_shard_survivor_is_smallest_ord_and_idempotent():
    from llmray.curate.dedup import KeyShard

    s = KeyShard()
    keys = np.array([[1, 1], [2, 2], [1, 1], [1, 1]], dtype=np.uint64)
    s.add(keys[2:], np.array([30, 5]))
    s.add(keys[:2], np.array([10, 20]))
    s.add(keys[:1], np.array([10]))  # a retried insert
    losers, survivors = s.losers()
    assert sorted(zip(losers.tolist(), survivors.tolist())) == [(10, 5), (30, 5)]
    assert s.frequent(2).tolist() == [1]


def test_lsh_shard_candidates_and_components():
    from llmray.curate.dedup import LSHShard, _components

    sh = LSHShard([0, 1])
    keys = np.array([[7, 1], [7, 2], [8, 2], [7, 3]], dtype=np.uint64)
    sh.add(np.array([40, 10, 30, 20]), keys, np.array([10]), np.zeros((1, 4), dtype=np.uint32))
    src, dst = sh.candidates()
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert {(10, 20), (10, 40), (20, 40)} <= pairs and all(a < b for a, b in pairs)
    assert (10, 30) in pairs  # band 1: ords 10 and 30 share key 2
    label = _components(5, np.array([3, 1, 4]), np.array([4, 2, 2]))
    assert label.tolist() == [0, 1, 1, 1, 1]


# ---------------------------------------------------------------- decontamination and classifier


def test_eval_index_matches_items(tmp_path):
    from llmray.curate.decontam import build_index

    ev = tmp_path / "ev.jsonl"
    q1 = "what is the capital city of the country that hosted the first modern olympic games in the year"
    ev.write_text(json.dumps({"id": "q1", "question": q1}) + "\n" + json.dumps({"id": "q2", "question": "tiny"}))
    idx = build_index([EvalSetConfig(path=str(ev), text_fields=["question"])], 13)
    assert idx.report == {"ev": {"items": 2, "too_short": 1}}
    res = idx.match([PROSE, "Intro. " + q1.upper() + " Outro.", PROSE + " " + " ".join(q1.split()[:12])])
    assert res[0] == (0, []) and res[1][1] == ["ev:q1"] and res[1][0] == len(q1.split()) - 12
    assert res[2] == (0, [])


def test_classifier_learns_separable_data():
    from llmray.curate.quality import train

    rng = random.Random(0)
    good = [" ".join(rng.choice(["data", "model", "returns", "the", "value", "of", "function"]) for _ in range(30))
            for _ in range(100)]
    bad = [" ".join(rng.choice(["buy", "cheap", "free", "click", "now", "casino"]) for _ in range(30))
           for _ in range(100)]
    model, report = train(good + bad, [1] * 100 + [0] * 100, ClassifierConfig(epochs=50, holdout=0.25))
    assert report["holdout_accuracy"] >= 0.95
    s = model.score(["the model returns the value", "free casino click now"])
    assert s[0] > 0.7 and s[1] < 0.3


def test_builtin_quality_seed_model():
    from llmray.curate.quality import build

    model, report = build(ClassifierConfig())
    assert report["data"] == "builtin-seed" and report["holdout_accuracy"] >= 0.85
    s = model.score([PROSE, "Home | About Us | Contact | Login | Cart (0) | Sitemap"])
    assert s[0] > 0.5 > s[1]


def test_stage_config_errors_name_the_field():
    from llmray.config import ConfigError
    from llmray.pipeline import parse_pipeline

    raw = {"name": "p", "stages": {"c": {"kind": "curate", "sources": [{"type": "python-docs"}],
                                         "near_dedup": {"bands": 64, "rows": 8}}}}
    with pytest.raises(ConfigError, match=r"stages\.c\.near_dedup"):
        parse_pipeline(raw)
    raw["stages"]["c"]["near_dedup"] = {}
    raw["stages"]["c"]["quality"] = {"treshold": 0.2}
    with pytest.raises(ConfigError, match=r"stages\.c\.quality\.treshold"):
        parse_pipeline(raw)
    raw["stages"]["c"]["quality"] = {}
    assert parse_pipeline(raw).stages["c"].near_dedup.num_perm == 256


def test_mix_and_pii_operators_on_a_batch():
    from llmray.curate import ops

    n = 400
    batch = {"id": np.array([f"d{i}" for i in range(n)], dtype=object),
             "source": np.array(["a"] * 200 + ["b"] * 200, dtype=object),
             "text": np.array(["write to x@example.com"] * n, dtype=object),
             "_drop": np.array([""] * n, dtype=object), "_why": np.array([""] * n, dtype=object),
             "_edits": np.array([""] * n, dtype=object)}
    out = ops.op_mix(ops.op_pii(batch, PiiConfig(enabled=True)), {"a": 0.25, "b": 2.5})
    kept_a = (out["_drop"][:200] == "").sum()
    assert 25 < kept_a < 75 and set(out["_drop"][:200]) == {"", "mix"}
    assert set(out["_repeat"][200:]) == {2, 3} and 50 < (out["_repeat"][200:] == 3).sum() < 150
    assert out["text"][0] == "write to <EMAIL>" and ops.parse_edits(out["_edits"][0]) == {"pii_emails": 1}
