"""Tokenizer training and corpus tokenization helpers behind the `tokenizer` and `tokenize` stage kinds.

- `split`: the deterministic document-id hash used for the val split and for sampling;
- `packing`: EOS-joined token streams cut into fixed-length rows, parquet shard writing;
- `quality`: bytes/token, words/token and fallback-byte share of a tokenizer on held-out text;
- `train`: the training sample streamed from a curate stage through Ray Data;
- `shards`: the Ray Data actor pool that tokenizes, packs and writes the token shards.
Only `split`, `packing` and `quality` are importable without Ray.
"""
