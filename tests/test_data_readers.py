"""Post-training data as users have it: every file format x every record layout, folders, globs,
`datasets` save_to_disk folders, an object store, field mappings, quarantine, and `prepare`
streaming a data set several times larger than its memory bound. No Ray.

The `datasets` package is not installed in the test environment, so save_to_disk folders are written
here with pyarrow exactly as `datasets` lays them out (`data-00000-of-00001.arrow` in Arrow IPC
stream format, `state.json` listing `_data_files`, `dataset_info.json`; a DatasetDict adds
`dataset_dict.json` and one such folder per split).
"""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmray.config import ConfigError
from llmray.data.formats import (
    DataError,
    Quarantine,
    check_fields,
    check_spec,
    held_out,
    iter_records,
    load_data,
    split_records,
)
from llmray.data.rows import ShuffledRows
from llmray.pipeline import parse_pipeline
from llmray.testing import write_dataset_dict, write_save_to_disk

U = {"role": "user", "content": "What is 2 + 2?"}
A = {"role": "assistant", "content": "4"}
SYS = {"role": "system", "content": "Be brief."}

# layout -> (use, records, expected canonical record without id)
LAYOUTS = {
    "messages": ("chat", [{"messages": [SYS, U, A]}], {"messages": [SYS, U, A]}),
    "sharegpt": ("chat", [{"conversations": [{"from": "system", "value": "Be brief."},
                                             {"from": "human", "value": U["content"]},
                                             {"from": "gpt", "value": "4"}]}], {"messages": [SYS, U, A]}),
    "alpaca": ("chat", [{"instruction": "What is 2 + 2?", "input": "", "output": "4"}], {"messages": [U, A]}),
    "prompt_completion": ("chat", [{"prompt": "What is 2 + 2?", "completion": "4"}], {"messages": [U, A]}),
    "pref_strings": ("pref", [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}],
                     {"prompt": [U], "chosen": "4", "rejected": "5"}),
    "pref_messages": ("pref", [{"prompt": [U], "chosen": [U, A], "rejected": [U, {**A, "content": "5"}]}],
                      {"prompt": [U], "chosen": "4", "rejected": "5"}),
}


def write_jsonl(path: Path, records: list) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()
    if path.name.endswith(".gz"):
        text = gzip.compress(text)
    elif path.name.endswith(".zst"):
        text = zstandard.ZstdCompressor().compress(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return path


def write_fmt(tmp: Path, fmt: str, records: list[dict]) -> str:
    if fmt == "parquet":
        tmp.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(records), tmp / "d.parquet", row_group_size=2)
        return str(tmp / "d.parquet")
    if fmt == "save_to_disk":
        return str(write_save_to_disk(tmp / "ds", records))
    return str(write_jsonl(tmp / f"d.{fmt}", records))


FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "save_to_disk")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_format_reads_every_layout(tmp_path, fmt, layout):
    use, records, want = LAYOUTS[layout]
    recs = [dict(records[0], id=f"r{i}") for i in range(5)]  # several rows: parquet row groups, arrow batches
    spec = write_fmt(tmp_path, fmt, recs)
    check_spec(spec, use)
    got = load_data(spec, use)
    assert not got.quarantined
    assert [r["id"] for r in got.records] == [f"r{i}" for i in range(5)]
    assert all({k: v for k, v in r.items() if k != "id"} == want for r in got.records)


def test_folder_glob_and_mixed_formats(tmp_path):
    d = tmp_path / "data"
    write_jsonl(d / "a.jsonl", [{"prompt": "a", "completion": "A"}])
    write_jsonl(d / "b.jsonl.zst", [{"prompt": "b", "completion": "B"}])
    (d / "sub").mkdir()
    pq.write_table(pa.Table.from_pylist([{"prompt": "c", "completion": "C"}]), d / "sub" / "c.parquet")
    (d / "notes.md").write_text("not data")
    table = pa.Table.from_pylist([{"prompt": "d", "completion": "D"}])
    with pa.OSFile(str(d / "sub" / "d.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)  # the IPC file format (random access), not the stream `datasets` writes
    folder = [r["messages"][0]["content"] for r in load_data(str(d), "chat").records]
    assert folder == ["a", "b", "c", "d"]  # recursive, name order, other files ignored
    glob = [r["messages"][0]["content"] for r in load_data(str(d / "*.jsonl*"), "chat").records]
    assert glob == ["a", "b"]
    deep = [r["messages"][0]["content"] for r in load_data(str(d / "**" / "*.parquet"), "chat").records]
    assert deep == ["c"]
    assert load_data(str(d / "b.jsonl.zst"), "chat").records[0]["id"] == "b.jsonl.zst:1"


def test_dataset_dict_splits_and_held_out(tmp_path):
    chat = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(6)]
    dd = write_dataset_dict(tmp_path / "dd", {"train": chat[:4], "validation": chat[4:]})
    check_spec(str(dd), "chat")
    assert len(load_data(str(dd), "chat", "train").records) == 4
    assert len(load_data(str(dd), "chat", "test").records) == 2  # "test": the held-out split there is
    assert len(load_data(str(dd / "validation"), "chat").records) == 2  # one split's folder directly
    # split_records takes the DatasetDict's held-out split instead of hashing ids
    got = list(split_records(str(dd), None, "chat", 0.5, None, lambda e: None))
    assert [s for s, _ in got] == ["train"] * 4 + ["test"] * 2
    only_val = write_dataset_dict(tmp_path / "v", {"validation": chat})
    with pytest.raises(FileNotFoundError, match=r"splits \['validation'\]"):
        load_data(str(only_val), "chat", "train")


def test_parquet_and_dataset_folder_from_s3(tmp_path, s3_endpoint):
    endpoint, fs = s3_endpoint
    fs.create_dir("userdata")
    recs = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(7)]
    with fs.open_output_stream("userdata/sft/part-0.parquet") as f:
        pq.write_table(pa.Table.from_pylist(recs[:4]), f)
    with fs.open_output_stream("userdata/sft/part-1.parquet") as f:
        pq.write_table(pa.Table.from_pylist(recs[4:]), f)
    local = write_dataset_dict(tmp_path / "dd", {"train": recs, "test": recs[:2]})
    for p in sorted(local.rglob("*")):
        if p.is_file():
            with fs.open_output_stream(f"userdata/dd/{p.relative_to(local).as_posix()}") as f:
                f.write(p.read_bytes())
    q = f"?endpoint_override={endpoint}&scheme=http"
    one = f"s3://userdata/sft/part-0.parquet{q}"
    assert check_spec(one, "chat") == one
    assert [r["messages"][1]["content"] for r in load_data(one, "chat").records] == ["a0", "a1", "a2", "a3"]
    assert len(load_data(f"s3://userdata/sft{q}", "chat").records) == 7  # a folder (prefix)
    assert len(load_data(f"s3://userdata/sft/*-1.parquet{q}", "chat").records) == 3  # a glob
    assert len(load_data(f"s3://userdata/dd{q}", "chat", "test").records) == 2  # a DatasetDict split
    first = load_data(one, "chat").records[0]
    assert first["messages"][0] == {"role": "user", "content": "q0"} and first["id"] == "part-0.parquet:1"


def test_field_mapping(tmp_path):
    f = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2 + 2?", "answer": "4", "key": "k1"},
                                            {"question": "no answer"}])
    got = load_data(str(f), "chat", fields={"prompt": "question", "completion": "answer", "id": "key"})
    assert got.records == [{"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
                            "id": "k1"}]
    assert len(got.quarantined) == 1 and "fields: ['prompt']" in got.quarantined[0]["reason"]
    d = write_jsonl(tmp_path / "dialog.jsonl", [{"dialog": [U, A]}])
    assert load_data(str(d), "chat", fields={"messages": "dialog"}).records[0]["messages"] == [U, A]
    p = write_jsonl(tmp_path / "rl.jsonl", [{"q": "2 + 2?", "gold": "4"}])
    rl = load_data(str(p), "prompt", fields={"prompt": "q", "reference": "gold"}).records[0]
    assert rl["prompt"] == [{"role": "user", "content": "2 + 2?"}] and rl["reference"] == "4"
    with pytest.raises(ValueError, match=r"unknown canonical field\(s\) \['question'\]"):
        check_fields({"question": "q"})


def _sft_stage(tmp_path, **fields) -> dict:
    return {"name": "x", "workdir": str(tmp_path / "runs"),
            "stages": {"s": {"kind": "sft", "from": str(tmp_path), **fields}}}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_pipeline(_sft_stage(tmp_path, data="builtin:instruct", fields={"answer": "a"}))
    assert "stages.s.fields" in str(e.value) and "unknown canonical" in str(e.value)
    for bad in (tmp_path / "missing.jsonl", tmp_path / "nope" / "*.parquet", tmp_path / "no-folder"):
        with pytest.raises(ConfigError) as e:
            parse_pipeline(_sft_stage(tmp_path, data=str(bad)))
        assert "stages.s.data" in str(e.value)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="unknown file type"):
        parse_pipeline(_sft_stage(tmp_path, data=str(tmp_path / "x.csv")))
    # a URI is parsed, not opened: nothing listens on this port
    check_spec("s3://bucket/data/*.parquet?endpoint_override=127.0.0.1:1&scheme=http", "chat")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        check_spec("ftp://host/data.jsonl", "chat")


def test_quarantine_and_nothing_recognisable(tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [
        {"messages": [U, A]}, "{broken", {"conversations": [{"from": "robot", "value": "x"}]},
        {"title": "unrelated"}, {"prompt": "p", "completion": ""}, {"messages": [U]}])
    bad: list[dict] = []
    got = list(iter_records(str(f), "chat", on_bad=bad.append))
    assert len(got) == 1 and [q["line"] for q in bad] == [2, 3, 4, 5, 6]
    reasons = [q["reason"] for q in bad]
    assert "invalid JSON" in reasons[0] and "unknown role 'robot'" in reasons[1]
    assert "not a chat record" in reasons[2] and "['title']" in reasons[2]
    assert "completion must be a non-empty string" in reasons[3] and "assistant turn" in reasons[4]
    with Quarantine(tmp_path / "stage", "records") as q:
        for entry in bad:
            q(entry)
    assert q.count == 5 and len(q.path.read_text().splitlines()) == 5
    nothing = write_jsonl(tmp_path / "other.jsonl", [{"title": "t", "body": "b"}] * 3)
    with pytest.raises(DataError, match=r"data: no record .* \(fields seen: \['body', 'title'\]"):
        load_data(str(nothing), "chat")
    with pytest.raises(DataError, match=r"prompts: no record"):
        load_data(str(nothing), "prompt", what="prompts")


def test_nothing_recognisable_fails_early(tmp_path, monkeypatch):
    """A large data set in an unknown layout fails after EARLY_FAIL records, not after reading it all."""
    from llmray.data import formats

    monkeypatch.setattr(formats, "EARLY_FAIL", 10)
    f = write_jsonl(tmp_path / "big.jsonl", [{"question": "q"}] * 50 + [{"prompt": "p", "completion": "c"}])
    bad: list[dict] = []
    with pytest.raises(DataError):
        list(iter_records(str(f), "chat", on_bad=bad.append))
    assert len(bad) == 10


def test_shuffled_rows_is_a_seeded_permutation(tmp_path):
    rows = [{"input_ids": [i] * 5, "n": i} for i in range(1000)]

    def write(seed, folder, spill):
        w = ShuffledRows(tmp_path / folder, seed, spill_bytes=spill, part_rows=300)
        for r in rows:
            w.add(r)
        assert w.close() == 1000
        assert not (tmp_path / folder / ".spill").exists()
        files = sorted((tmp_path / folder).glob("*.parquet"))
        return [n for f in files for n in pq.read_table(f).column("n").to_pylist()], len(files)

    merged, parts = write(0, "a", 20_000)  # ~40 spilled chunks, merged
    assert sorted(merged) == list(range(1000)) and merged != list(range(1000)) and parts > 1
    assert write(0, "b", 20_000)[0] == merged  # deterministic
    assert write(1, "c", 20_000)[0] != merged
    in_memory, parts = write(0, "d", 1 << 30)  # one buffer
    assert sorted(in_memory) == list(range(1000)) and parts == 4
    # uniform: each row lands in the first half about half the time (chunks interleave)
    firsts = sum(n < 500 for n in merged[:500])
    assert 200 < firsts < 300


def _fake_encode(rec: dict) -> dict:
    ids = list(rec["messages"][-1]["content"].encode()[:600])
    return {"input_ids": ids, "loss_mask": [1] * len(ids), "length": len(ids)}


def _big_chat_file(path: Path, n: int) -> tuple[int, int]:
    """n prompt/completion records of ~520 bytes; (unrecognisable, too long) counts."""
    rng = random.Random(0)
    bad = too_long = 0
    with zstandard.ZstdCompressor().stream_writer(path.open("wb")) as w:
        for i in range(n):
            rec = {"prompt": f"q{i}", "completion": rng.randbytes(250).hex()}
            if i % 500 == 7:
                rec = {"question": f"q{i}"}  # nothing recognisable
                bad += 1
            elif i % 997 == 0:
                rec["completion"] *= 2  # too long for max_seq_len
                too_long += 1
            w.write((json.dumps(rec) + "\n").encode())
    return bad, too_long


@pytest.mark.integration  # a subprocess preparing a large file under a memory cap
def test_prepare_streams_in_bounded_memory(tmp_path, monkeypatch):
    """prepare() over a data set ~4x its memory bound as JSON (~60x as the Python rows the old code
    held in lists): the driver's peak Python allocation stays under the bound."""
    from llmray import posttrain
    from llmray.data import rows as rows_mod
    from llmray.stages.sft import Config

    bound = 2 << 20
    monkeypatch.setattr(rows_mod, "SPILL_BYTES", 256 << 10)  # the shuffle buffer: ~1/8 of the bound
    n = 18_000
    data_bytes = n * 520  # uncompressed JSON, about
    bad, too_long = _big_chat_file(tmp_path / "big.jsonl.zst", n)
    _big_chat_file(tmp_path / "small.jsonl.zst", 200)

    def run(name: str):
        cfg = Config(kind="sft", init="chat", data=str(tmp_path / f"{name}.jsonl.zst"), max_seq_len=550,
                     eval_fraction=0.1)
        ctx = SimpleNamespace(work_dir=tmp_path / name / "work", out_dir=tmp_path / name / "out", inputs={})
        return posttrain.prepare(cfg, ctx, "chat", _fake_encode), ctx

    run("small")  # first use imports modules: not what is measured
    tracemalloc.start()
    try:
        out, ctx = run("big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out["quarantined"] == bad + too_long
    assert out["train_records"] + out["val_records"] == n - bad - too_long
    assert 0.07 < out["val_records"] / (n - bad) < 0.13
    lines = (ctx.out_dir / "quarantine" / "records.jsonl").read_text().splitlines()
    assert len(lines) == out["quarantined"] and sum("max_seq_len" in x for x in lines) == too_long
    parts = sorted(Path(out["train_dir"]).glob("*.parquet"))
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in parts) == out["train_records"]
    first = pq.read_table(parts[0]).slice(0, 1).to_pylist()[0]
    assert len(first["input_ids"]) == 500 and first["loss_mask"] == [1] * 500
    assert data_bytes > 4 * bound
    assert peak < bound, f"peak {peak / 1e6:.2f} MB for {data_bytes / 1e6:.1f} MB of data"
    print(f"prepare: {n} records, {data_bytes / 1e6:.1f} MB of JSON, traced peak {peak / 1e6:.2f} MB")


def test_rl_prompts_from_a_dataset_dict_with_a_mapping(tmp_path, tiny_tokenizer_dir):
    """ppo/grpo prompts: a DatasetDict folder in a custom layout; its test split is the held-out set."""
    from transformers import AutoTokenizer

    from llmray.rlhf.data import load_prompts
    from llmray.stages import get_stage

    qa = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    dd = write_dataset_dict(tmp_path / "qa", {"train": qa[:6] + [{"question": "word " * 200, "answer": "x"}],
                                              "test": qa[6:]})
    raw = {"kind": "grpo", "init": "sft", "reward": "rm", "prompts": str(dd),
           "fields": {"prompt": "question", "reference": "answer"}, "max_prompt_tokens": 64}
    cfg = get_stage("grpo").Config.model_validate(raw)
    data = load_prompts(cfg, AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir)))
    assert [r["reference"] for r in data.train] == [str(2 * i) for i in range(6)]
    assert [r["reference"] for r in data.eval] == ["12", "14"]
    assert data.train[0]["prompt"] == [{"role": "user", "content": "What is 0 + 0?"}] and data.train[0]["ids"]
    assert len(data.quarantined) == 1 and "max_prompt_tokens" in data.quarantined[0]["reason"]
    with pytest.raises(DataError, match=r"prompts: no record .*\['answer', 'question'\]"):
        load_prompts(get_stage("grpo").Config.model_validate({**raw, "fields": {}}), None)


def test_heldout_records_read_only_the_heldout_source(tmp_path):
    from llmray.posttrain import heldout_records
    from llmray.stages.sft import Config

    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"t{i}", "completion": "x"} for i in range(50)])
    held = write_jsonl(tmp_path / "held.jsonl", [{"prompt": f"h{i}", "completion": "y"} for i in range(5)])
    cfg = Config(kind="sft", init="chat", data=str(train), eval_data=str(held))
    train.write_text("{not json\n" * 3)  # never read: the held-out records come from eval_data alone
    got = heldout_records(cfg, "prompt", 3)
    assert [r["prompt"][0]["content"] for r in got] == ["h0", "h1", "h2"] and got[0]["reference"] == "y"
    by_hash = Config(kind="sft", init="chat", data=str(held), eval_fraction=0.5)
    ids = [r["id"] for r in heldout_records(by_hash, "chat", 5)]
    assert ids and all(held_out(i, 0.5) for i in ids)
