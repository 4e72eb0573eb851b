"""The `tokenize` stage: packing (property tests), the deterministic split, and the stage on a
real local Ray: every token of the corpus lands in exactly one shard row once (or in the counted
dropped tail), the same shards for any batch size or pool size, and a full runner pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tokenize_support import corpus_texts, fake_curate_module, make_ctx, stage_output, write_corpus

from llmray.stages import tokenize as stage
from llmray.tokenization.packing import (
    RowPacker,
    ShardWriter,
    count_rows,
    join_with_eos,
    read_rows,
    token_dtype,
)
from llmray.tokenization.split import val_mask

# ------------------------------------------------------------------ packing and split (no Ray)


@settings(max_examples=200, deadline=None)
@given(streams=st.lists(st.lists(st.integers(0, 60000), max_size=40), max_size=12), seq_len=st.integers(1, 17))
def test_row_packer_emits_the_concatenation_in_rows(streams, seq_len):
    packer = RowPacker(seq_len, np.uint16)
    rows = [packer.add(s) for s in streams]
    flat = [t for s in streams for t in s]
    got = np.concatenate([r.reshape(-1) for r in rows] + [packer.remainder]) if streams else packer.remainder
    assert got.tolist() == flat
    assert all(r.shape[1] == seq_len for r in rows)
    assert len(packer.remainder) == len(flat) % seq_len


def test_join_with_eos_puts_one_eos_after_every_document():
    assert join_with_eos([[5, 6], [], [7]], 1, np.uint16).tolist() == [5, 6, 1, 1, 7, 1]
    assert join_with_eos([], 1, np.uint16).tolist() == []


def test_token_dtype():
    assert token_dtype(1024) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32


def test_shard_writer_round_trip(tmp_path):
    rows = np.arange(23 * 4, dtype=np.uint16).reshape(23, 4)
    w = ShardWriter(tmp_path, "part", 4, np.uint16, rows_per_shard=10)
    for chunk in (rows[:3], rows[3:15], rows[15:]):
        w.add(chunk)
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet",
                                                         "part-00002.parquet"]
    assert (read_rows(tmp_path) == rows).all() and count_rows(tmp_path) == 23 == w.rows
    assert str(pq.read_schema(tmp_path / "part-00000.parquet").field("input_ids").type) == "list<element: uint16>"


def test_val_split_is_a_deterministic_hash_of_the_id():
    ids = [f"doc-{i}" for i in range(20000)]
    m = val_mask(ids, 0.1)
    assert abs(m.mean() - 0.1) < 0.01
    assert (val_mask(ids, 0.1) == m).all()
    assert (val_mask(list(reversed(ids)), 0.1) == m[::-1]).all()  # order-independent
    assert (m <= val_mask(ids, 0.2)).all()  # a larger fraction only adds documents
    assert (val_mask(ids, 0.1, seed=1) != m).any()
    assert not val_mask(ids, 0.0).any()


# ------------------------------------------------------------------ the stage on Ray

SEQ_LEN = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_dir):
    root = tmp_path_factory.mktemp("tokenize")
    records = write_corpus(root / "corpus", corpus_texts(), files=3)
    inputs = {"data": stage_output("corpus", "curate", root / "corpus", {"data": "data"}),
              "tokenizer": stage_output("tok", "tokenizer", Path(tiny_tokenizer_dir).parent,
                                        {"tokenizer": Path(tiny_tokenizer_dir).name})}
    return root, records, inputs


def _run(root, inputs, name, **kw):
    cfg = stage.Config(data="corpus", tokenizer="tok", seq_len=SEQ_LEN, val_fraction=0.1, **kw)
    ctx = make_ctx(root, name, "tokenize", inputs)
    return ctx.out_dir, stage.run(cfg, ctx)


@pytest.fixture(scope="module")
def tokenized(ray_local, setup):
    root, _, inputs = setup
    return _run(root, inputs, "tk", batch_size=32, actors=2, rows_per_shard=50)


def _expected_streams(records, tok_dir):
    """Per split: every document's ids then EOS, in corpus order (literal special strings are text)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = Tokenizer.from_file(str(Path(tok_dir) / "tokenizer.json"))
    tok.encode_special_tokens = True
    eos = AutoTokenizer.from_pretrained(str(tok_dir)).eos_token_id
    is_val = val_mask([r["id"] for r in records], 0.1)
    out = {}
    for split, mask in (("train", ~is_val), ("val", is_val)):
        ids = []
        for r, m in zip(records, mask):
            if m:
                ids += tok.encode(r["text"], add_special_tokens=False).ids + [eos]
        out[split] = np.array(ids)
    return out, eos, int(is_val.sum())


def test_every_token_lands_in_exactly_one_shard_once(setup, tokenized, tiny_tokenizer_dir):
    _, records, _ = setup
    out, result = tokenized
    m = result.metrics
    expected, eos, n_val = _expected_streams(records, tiny_tokenizer_dir)
    for split in ("train", "val"):
        rows = read_rows(out / split)
        n = rows.shape[0]
        assert rows.shape[1] == SEQ_LEN and n == m[f"{split}_sequences"] > 0
        # The shards, in file order, are exactly the split's stream cut into rows; what is left
        # over is the counted dropped tail (shorter than one row).
        assert rows.reshape(-1).tolist() == expected[split][: n * SEQ_LEN].tolist()
        dropped = len(expected[split]) - n * SEQ_LEN
        assert 0 <= dropped < SEQ_LEN and dropped == m[f"{split}_dropped_tail_tokens"]
    assert m["corpus_tokens"] == len(expected["train"]) + len(expected["val"])
    assert m["tokens"] == m["sequences"] * SEQ_LEN == m["corpus_tokens"] - m["dropped_tail_tokens"]
    # One EOS per document: the document containing a literal "<|endoftext|>" adds none of its own.
    assert (expected["train"] == eos).sum() + (expected["val"] == eos).sum() == len(records)
    assert m["docs"] == len(records) and m["val_docs"] == n_val


def test_small_corpus_is_tokenized_in_process_into_the_same_shards(setup, tiny_tokenizer_dir, tmp_path):
    """The stage's default on a small corpus: threads in this process (no Ray Data pool, no Ray needed),
    small batches so several are in flight; the shards are the split streams cut into rows, exactly
    as the pool writes them (test above), and the fixed cost is reported."""
    root, records, inputs = setup
    out, result = _run(tmp_path, inputs, "tk_local", batch_size=16, rows_per_shard=50)
    m = result.metrics
    assert m["in_process"] is True and m["batch_size"] == 16
    expected, _, _ = _expected_streams(records, tiny_tokenizer_dir)
    for split in ("train", "val"):
        rows = read_rows(out / split)
        assert rows.reshape(-1).tolist() == expected[split][: rows.size].tolist()
        assert len(expected[split]) - rows.size == m[f"{split}_dropped_tail_tokens"]
    fc = m["fixed_cost"]
    assert fc["wall_s"] >= fc["startup_s"] + fc["work_s"] > 0


def test_shards_are_uint16_rows_that_ray_data_streams_back(ray_local, tokenized):
    import ray.data

    out, result = tokenized
    m = result.metrics
    assert m["dtype"] == "uint16" and m["vocab_size"] == 1024 and m["seq_len"] == SEQ_LEN
    files = sorted((out / "train").glob("*.parquet"))
    assert len(files) == m["train_shards"] >= 2  # rows_per_shard=50
    assert str(pq.read_schema(files[0]).field("input_ids").type) == "list<element: uint16>"
    ds = ray.data.read_parquet(str(out / "train"))
    assert ds.count() == m["train_sequences"]
    batch = next(iter(ds.iter_batches(batch_size=8, batch_format="numpy")))
    assert np.stack(batch["input_ids"]).shape == (8, SEQ_LEN)


def test_tokenizer_folder_is_copied(tokenized, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    out, result = tokenized
    assert result.outputs == {"train": "train", "val": "val", "tokenizer": "tokenizer"}
    copied = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == \
        (Path(tiny_tokenizer_dir) / "tokenizer.json").read_bytes()
    assert copied.chat_template and len(copied) == result.metrics["vocab_size"]


def test_same_shards_for_any_batch_size_and_pool_size(ray_local, setup, tokenized):
    root, _, inputs = setup
    out, result = tokenized
    out2, result2 = _run(root, inputs, "tk_again", batch_size=7, actors=1, rows_per_shard=50)
    for split in ("train", "val"):
        assert (read_rows(out2 / split) == read_rows(out / split)).all()
    assert result2.metrics["dropped_tail_tokens"] == result.metrics["dropped_tail_tokens"]


def test_too_little_data_for_a_row_is_an_error(ray_local, setup, tmp_path):
    _, _, inputs = setup
    write_corpus(tmp_path / "corpus", ["tiny doc"], files=1)
    small = dict(inputs, data=stage_output("corpus", "curate", tmp_path / "corpus", {"data": "data"}))
    with pytest.raises(ValueError, match="no full training row"):
        _run(tmp_path, small, "tk_small")


# ------------------------------------------------------------------ through the runner


@pytest.fixture
def fake_curate(monkeypatch):
    """Registers a stand-in `curate` kind (writes the test corpus) for this test only."""
    from llmray.pipeline import _pipeline_class
    from llmray.stages import STAGES

    mod = fake_curate_module()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(STAGES, "curate", mod.__name__)
    _pipeline_class.cache_clear()
    yield
    _pipeline_class.cache_clear()


def test_pipeline_curate_tokenizer_tokenize(ray_local, fake_curate, tmp_path):
    from transformers import AutoTokenizer

    from llmray.pipeline import parse_pipeline
    from llmray.runner import read_manifest, run_pipeline

    raw = {"name": "tok", "workdir": str(tmp_path), "stages": {
        "corpus": {"kind": "curate", "docs": 300},
        "tok": {"kind": "tokenizer", "data": "corpus", "vocab_size": 1024},
        "tokens": {"kind": "tokenize", "data": "corpus", "tokenizer": "tok", "seq_len": 128,
                   "val_fraction": 0.05},
    }}
    states = run_pipeline(parse_pipeline(raw), echo=lambda *_: None)
    assert states == {"corpus": "completed", "tok": "completed", "tokens": "completed"}
    run = tmp_path / "tok"
    man = read_manifest(run / "tokens")
    assert man["status"] == "completed" and man["outputs"] == {"train": "train", "val": "val",
                                                               "tokenizer": "tokenizer"}
    assert man["metrics"]["train_sequences"] > 0 and man["metrics"]["val_sequences"] > 0
    assert read_manifest(run / "tok")["metrics"]["vocab_size"] == 1024
    assert len(AutoTokenizer.from_pretrained(str(run / "tokens" / "tokenizer"))) == 1024
    assert count_rows(run / "tokens" / "train") == man["metrics"]["train_sequences"]
    # unchanged config: everything cached
    assert set(run_pipeline(parse_pipeline(raw), echo=lambda *_: None).values()) == {"cached"}


@pytest.mark.parametrize("n_docs,actors", [(1, 2), (7, 2), (5000, 2), (50720, 2), (50720, 3), (1_000_003, 16)])
def test_automatic_batches_are_balanced_over_the_pool(n_docs, actors):
    from llmray.tokenization.shards import MAX_AUTO_BATCH, batch_plan

    size = batch_plan(n_docs, actors, None)
    batches = -(-n_docs // size)
    assert 1 <= size <= MAX_AUTO_BATCH
    # Every actor gets the same number of batches (or, for a tiny corpus, one batch per doc at most).
    assert batches % actors == 0 or batches == n_docs
    # And no more batches than needed: one fewer round would exceed the cap.
    rounds = -(-batches // actors)
    assert rounds == 1 or -(-n_docs // ((rounds - 1) * actors)) > MAX_AUTO_BATCH


def test_a_given_batch_size_is_used_as_is():
    from llmray.tokenization.shards import batch_plan

    assert batch_plan(50720, 2, 1000) == 1000
