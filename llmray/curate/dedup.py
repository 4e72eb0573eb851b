"""Corpus-wide decisions on Ray actors: boilerplate line counts, exact dedup, MinHash LSH near dedup.

Data flow (each a barrier between two streaming segments of the pipeline):
1. a Ray Data task computes keys for the live documents of its batch and sends them, routed by key
   (or, for LSH, by band), to shard actors: `KeyShard` for line keys and exact-text hashes,
   `LSHShard` for band bucket keys (band b lives on shard b % shards) plus the full signature of
   the documents whose `_ord` falls on that shard;
2. after the dataset is materialized, the driver asks the shards for the decision:
   - exact: per text hash the smallest `_ord` survives, every other copy is a loser;
   - near: each shard turns its band buckets into candidate edges (bucket minimum -> member, and
     consecutive members); the driver verifies every candidate -- by the exact Jaccard of the two
     shingle sets (recomputed in one extra pass over just the candidate documents) or by the MinHash
     estimate from the full signatures -- joins verified edges into clusters (min-label
     propagation), and every member but the cluster's smallest `_ord` is a loser;
3. the losers (`_ord`, survivor `_ord`, similarity) are broadcast and marked in the next segment.
Decisions depend only on `_ord`s and signatures, never on arrival order or the number of shards.
Adding the same key twice (a retried task) changes nothing: pairs are de-duplicated first.
"""

from __future__ import annotations

import unicodedata

import numpy as np

from llmray.curate.hashing import text_hash128

# ---------------------------------------------------------------- shard actors (wrapped in ray.remote)


class KeyShard:
    """(key, _ord) pairs for the keys routed to this shard."""

    def __init__(self):
        self._keys: list[np.ndarray] = []
        self._ords: list[np.ndarray] = []

    def add(self, keys: np.ndarray, ords: np.ndarray) -> int:
        self._keys.append(np.asarray(keys, dtype=np.uint64).reshape(len(ords), -1))
        self._ords.append(np.asarray(ords, dtype=np.int64))
        return len(ords)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._ords:
            return np.empty((0, 1), dtype=np.uint64), np.empty(0, dtype=np.int64)
        keys, ords = np.concatenate(self._keys), np.concatenate(self._ords)
        order = np.lexsort((ords, *keys.T[::-1]))
        keys, ords = keys[order], ords[order]
        same = np.r_[False, (keys[1:] == keys[:-1]).all(axis=1) & (ords[1:] == ords[:-1])]
        return keys[~same], ords[~same]

    def losers(self) -> tuple[np.ndarray, np.ndarray]:
        """(loser _ords, survivor _ords): per key everything but the smallest _ord."""
        keys, ords = self._pairs()
        if len(ords) == 0:
            return ords, ords
        start = np.r_[True, ~(keys[1:] == keys[:-1]).all(axis=1)]
        group_first = np.maximum.accumulate(np.where(start, np.arange(len(ords)), 0))
        return ords[~start], ords[group_first][~start]

    def frequent(self, min_count: int) -> np.ndarray:
        """Keys held by at least `min_count` distinct documents."""
        keys, _ = self._pairs()
        if len(keys) == 0:
            return np.empty(0, dtype=np.uint64)
        k = keys[:, 0]
        uniq, counts = np.unique(k, return_counts=True)
        return uniq[counts >= min_count]

    def size(self) -> int:
        return int(sum(len(o) for o in self._ords))


class LSHShard:
    """Band bucket keys for the bands this shard owns, and signatures of the documents it owns."""

    def __init__(self, band_ids: list[int]):
        self.band_ids = band_ids
        self._ords: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._sig_ords: list[np.ndarray] = []
        self._sigs: list[np.ndarray] = []
        self._sig_index = None

    def add(self, ords, keys, sig_ords, sigs) -> int:
        self._ords.append(np.asarray(ords, dtype=np.int64))
        self._keys.append(np.asarray(keys, dtype=np.uint64))
        self._sig_ords.append(np.asarray(sig_ords, dtype=np.int64))
        self._sigs.append(np.asarray(sigs, dtype=np.uint32))
        return len(ords)

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """Candidate pairs (smaller _ord, larger _ord), unique, from every owned band's buckets."""
        if not self._ords:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        ords, keys = np.concatenate(self._ords), np.concatenate(self._keys)
        src, dst = [], []
        for j in range(keys.shape[1]):
            order = np.lexsort((ords, keys[:, j]))
            k, o = keys[order, j], ords[order]
            keep = np.r_[True, (k[1:] != k[:-1]) | (o[1:] != o[:-1])]  # retried inserts
            k, o = k[keep], o[keep]
            same = np.r_[False, k[1:] == k[:-1]]  # member i shares the bucket of member i-1
            if not same.any():
                continue
            first = np.maximum.accumulate(np.where(~same, np.arange(len(o)), 0))
            idx = np.flatnonzero(same)
            src += [o[first[idx]], o[idx - 1]]  # star from the bucket minimum + chain of neighbours
            dst += [o[idx], o[idx]]
        if not src:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        pairs = np.unique(np.stack([np.concatenate(src), np.concatenate(dst)], axis=1), axis=0)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        return pairs[:, 0], pairs[:, 1]

    def signatures(self, ords: np.ndarray) -> np.ndarray:
        """Signatures (in the order asked) of documents owned by this shard."""
        if self._sig_index is None:
            so = np.concatenate(self._sig_ords) if self._sig_ords else np.empty(0, dtype=np.int64)
            sg = np.concatenate(self._sigs) if self._sigs else np.empty((0, 0), dtype=np.uint32)
            order = np.argsort(so, kind="stable")
            self._sig_index = (so[order], sg[order])
        so, sg = self._sig_index
        pos = np.searchsorted(so, ords)
        if len(ords) and (pos.max() >= len(so) or not np.array_equal(so[pos], ords)):
            raise KeyError("asked for a signature this shard does not hold")
        return sg[pos]

    def size(self) -> int:
        return int(sum(len(o) for o in self._ords))


def make_actors(cls, n: int, *args_per_actor):
    """`n` detached-from-CPU actors (num_cpus=0: they mostly wait; the work runs in Data tasks)."""
    import ray
    from ray.data import DataContext

    # Not launched by a Dataset, so Ray Data's label selector does not reach them: pass the stage's
    # `placement:` labels (set on the DataContext by llmray.resources.data_placement) ourselves.
    labels = DataContext.get_current().execution_options.label_selector
    remote = ray.remote(num_cpus=0, max_restarts=0, **({"label_selector": dict(labels)} if labels else {}))(cls)
    if args_per_actor:
        return [remote.remote(*a) for a in args_per_actor[0]]
    return [remote.remote() for _ in range(n)]


def _route(shards, keys: np.ndarray, ords: np.ndarray, route_key: np.ndarray) -> None:
    import ray

    n = len(shards)
    dest = (route_key % np.uint64(n)).astype(np.int64)
    ray.get([shards[s].add.remote(keys[dest == s], ords[dest == s]) for s in range(n) if (dest == s).any()])


# ---------------------------------------------------------------- key operators (Ray Data tasks)


def op_line_keys(batch: dict, shards, min_chars: int) -> dict:
    from llmray.curate.clean import line_keys

    live = np.flatnonzero(batch["_drop"] == "")
    keys, ords = [], []
    for i in live:
        ks = line_keys(batch["text"][i], min_chars)
        keys.extend(ks)
        ords.extend([int(batch["_ord"][i])] * len(ks))
    if keys:
        k = np.asarray(keys, dtype=np.uint64)
        _route(shards, k, np.asarray(ords, dtype=np.int64), k)
    return batch


def normalize_exact(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def op_exact_keys(batch: dict, shards, normalize: bool) -> dict:
    live = np.flatnonzero(batch["_drop"] == "")
    if len(live):
        hs = [text_hash128(normalize_exact(batch["text"][i]) if normalize else batch["text"][i]) for i in live]
        keys = np.asarray(hs, dtype=np.uint64).reshape(-1, 2)
        _route(shards, keys, batch["_ord"][live].astype(np.int64), keys[:, 1])
    return batch


def op_near_keys(batch: dict, shards, p: dict) -> dict:
    """MinHash the live documents, send each shard its bands' keys and its documents' signatures."""
    import ray

    from llmray.curate.minhash import band_keys, signatures

    live = np.flatnonzero(batch["_drop"] == "")
    if not len(live):
        return batch
    sig, n_sh = signatures([batch["text"][i] for i in live], p["num_perm"], p["ngram"], p["seed"], p["hash"])
    ords = batch["_ord"][live].astype(np.int64)
    has = n_sh > 0  # a document without words has no shingles and no near duplicates
    sig, ords = sig[has], ords[has]
    keys = band_keys(sig, p["bands"], p["rows"])
    n = len(shards)
    calls = []
    for s in range(n):
        bands = list(range(s, p["bands"], n))
        # Full signatures are only kept when the verification uses them.
        mine = ((ords % n) == s) & (p["verify"] == "estimate")
        calls.append(shards[s].add.remote(ords, keys[:, bands], ords[mine], sig[mine]))
    ray.get(calls)
    return batch


# ---------------------------------------------------------------- decisions (driver)


def exact_decision(shards) -> dict:
    import ray

    parts = ray.get([s.losers.remote() for s in shards])
    return _decision(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                     np.ones(sum(len(p[0]) for p in parts), dtype=np.float32))


def boilerplate_keys(shards, min_count: int) -> frozenset[int]:
    import ray

    parts = ray.get([s.frequent.remote(min_count) for s in shards])
    return frozenset(int(k) for p in parts for k in p)


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Per node the smallest node index of its connected component (min-label propagation with
    pointer jumping; converges in a few rounds for the star-shaped graphs LSH produces)."""
    label = np.arange(n)
    while True:
        m = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, m)
        np.minimum.at(new, v, m)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def candidate_pairs(shards) -> tuple[np.ndarray, np.ndarray]:
    import ray

    parts = ray.get([s.candidates.remote() for s in shards])
    src = np.concatenate([p[0] for p in parts])
    dst = np.concatenate([p[1] for p in parts])
    if len(src):
        pairs = np.unique(np.stack([src, dst], axis=1), axis=0)
        src, dst = pairs[:, 0], pairs[:, 1]
    return src, dst


def _exact_similarity(sets: dict[int, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(len(a))
    for k, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        sx, sy = sets[x], sets[y]
        inter = len(np.intersect1d(sx, sy, assume_unique=True))
        out[k] = inter / max(len(sx) + len(sy) - inter, 1)
    return out


def near_decision(shards, threshold: float, verify: str, num_perm: int, shingle_sets=None) -> tuple[dict, dict]:
    """Candidates -> verified edges -> clusters -> losers. Returns (decision, stats).

    `shingle_sets(ords) -> {ord: sorted unique uint32 shingle hashes}` is needed for exact verification."""
    src, dst = candidate_pairs(shards)
    stats = {"candidate_pairs": len(src), "verify": verify}
    nodes = np.unique(np.concatenate([src, dst]))
    u, v = np.searchsorted(nodes, src), np.searchsorted(nodes, dst)
    if verify == "exact":
        sets = shingle_sets(nodes) if len(nodes) else {}

        def sim_fn(a, b):
            return _exact_similarity(sets, nodes[a], nodes[b])
    else:
        sigs = _gather_signatures(shards, nodes, num_perm)

        def sim_fn(a, b):
            return (sigs[a] == sigs[b]).mean(axis=1) if len(a) else np.empty(0)
    ok = sim_fn(u, v) >= threshold
    u, v = u[ok], v[ok]
    stats["verified_pairs"] = len(u)
    label = _components(len(nodes), u, v)
    lose = np.flatnonzero(label != np.arange(len(nodes)))
    stats["clusters"] = len(np.unique(label[lose]))
    # Similarity to the survivor (not necessarily a direct edge: clusters are transitive).
    return _decision(nodes[lose], nodes[label[lose]], sim_fn(lose, label[lose]).astype(np.float32)), stats


def shingle_sets(ds, ords: np.ndarray, p: dict) -> dict[int, np.ndarray]:
    """One pass over the rows: the sorted unique shingle hashes of the documents in `ords`."""
    import ray

    ref = ray.put(np.asarray(ords, dtype=np.int64))

    def pick(batch, ref=ref):
        from llmray.curate.minhash import shingle_hashes
        from llmray.curate.ops import cached_get

        m = (batch["_drop"] == "") & np.isin(batch["_ord"], cached_get(ref))
        h, off = shingle_hashes([batch["text"][i] for i in np.flatnonzero(m)], p["ngram"], p["hash"])
        sets = [np.unique(h[off[k]:off[k + 1]]).tobytes() for k in range(len(off) - 1)]
        return {"_ord": batch["_ord"][m], "sh": np.array(sets, dtype=object)}

    out: dict[int, np.ndarray] = {}
    for b in ds.map_batches(pick, batch_format="numpy").iter_batches(batch_format="numpy"):
        for o, raw in zip(b["_ord"], b["sh"]):
            out[int(o)] = np.frombuffer(raw, dtype=np.uint32)
    return out


def _gather_signatures(shards, nodes: np.ndarray, num_perm: int) -> np.ndarray:
    import ray

    n = len(shards)
    owner = nodes % n
    got = ray.get([shards[s].signatures.remote(nodes[owner == s]) for s in range(n)])
    out = np.empty((len(nodes), num_perm), dtype=np.uint32)
    for s, sig in enumerate(got):
        if len(sig):
            out[owner == s] = sig
    return out


def _decision(losers: np.ndarray, survivors: np.ndarray, sim: np.ndarray) -> dict:
    order = np.argsort(losers, kind="stable")
    return {"loser": losers[order].astype(np.int64), "survivor": survivors[order].astype(np.int64),
            "sim": sim[order]}


def op_mark(batch: dict, op: str, decision_ref, sample_chars: int) -> dict:
    """Mark live rows whose _ord is a loser of a dedup decision."""
    from llmray.curate.ops import _View, cached_get

    d = cached_get(decision_ref)
    v = _View(batch, sample_chars)
    if len(v.live) and len(d["loser"]):
        ords = batch["_ord"][v.live].astype(np.int64)
        pos = np.minimum(np.searchsorted(d["loser"], ords), len(d["loser"]) - 1)
        for i, p, hit in zip(v.live, pos, d["loser"][pos] == ords):
            if hit:
                what = "exact_duplicate:" if op == "exact_dedup" else f"near_duplicate: Jaccard {d['sim'][p]:.3f}"
                v.reject(i, op, f"{what} of #{int(d['survivor'][p])}")
    return v.done()
