"""The curate stage on Ray Data: read -> operators -> barriers for global decisions -> outputs.

Data flow:
  a Ray Data datasource, one read task per file / module chunk / repository --> rows (`sources.py`,
  `readers.py`; `warc.py` applies the URL lists, `extract.py` HTML -> text per batch, `repos.py` the
  licence and file rules while reading) -> clean -> language -> [boilerplate: line keys to shard actors | materialize | strip frequent lines]
  -> gopher_quality -> gopher_repetition -> c4 -> fineweb -> toxicity -> quality (scorers as task maps: ops.op_score)
  -> decontaminate -> pii
  -> [exact_dedup: hashes to shard actors | materialize | mark losers]
  -> [near_dedup: MinHash band keys to LSH shard actors | materialize | verify, cluster, mark losers]
  -> mix -> materialize -> outputs (`accounting.py`).
Between barriers everything streams; a barrier materializes the rows (rejected rows keep only a text
sample) because a global decision needs all keys first. Ray Data's CPU use is capped at `workers`
(the executor's resource limit and each operator's task pool size); the shard actors reserve no CPU
(`dedup.make_actors`), so the stage shares a small machine with whatever else runs.
"""

from __future__ import annotations

import contextlib
import functools
import time

from llmray.curate import dedup, ops
from llmray.curate.config import default_source_name
from llmray.curate.progress import CurateProgress
from llmray.curate.sources import ROW_COLUMNS
from llmray.stages.base import FixedCost


@contextlib.contextmanager
def data_context(workers: int, verbose: bool = False):
    """Cap Ray Data at `workers` CPUs, keep block order (deterministic output files), quiet progress."""
    from ray.data import DataContext, ExecutionResources

    dctx = DataContext.get_current()
    opts = dctx.execution_options
    saved = (opts.resource_limits, opts.preserve_order, dctx.enable_progress_bars)
    opts.resource_limits = ExecutionResources(cpu=workers)
    opts.preserve_order = True
    dctx.enable_progress_bars = verbose
    try:
        yield dctx
    finally:
        opts.resource_limits, opts.preserve_order, dctx.enable_progress_bars = saved


def make_datasource(tasks: list[dict], clean_cfg, keep_meta: bool, batch_rows: int):
    """A Ray Data datasource with one read task per planned read (file, module chunk, limited source);
    each yields Arrow blocks of at most `batch_rows` rows, so parallelism follows the files."""
    import pyarrow as pa
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    from llmray.curate.readers import read_task

    schema = pa.schema([(c, pa.int64() if c in ("_line", "_ord") else pa.string()) for c in ROW_COLUMNS])

    def read_fn(task):
        for batch in read_task(task, clean_cfg, keep_meta, batch_rows):
            yield pa.Table.from_pydict(batch, schema=schema)

    class CurateSource(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(functools.partial(read_fn, t), meta, schema=schema) for t in tasks]

    return CurateSource()


class Curator:
    """Builds and runs the Ray Data plan for one curate config."""

    def __init__(self, cfg, log):
        self.cfg, self.log = cfg, log
        self.names = [default_source_name(s, i) for i, s in enumerate(cfg.sources)]
        self.sample_chars = cfg.output.sample_chars
        self.info: dict = {}
        self.actors: list = []

    # ------------------------------------------------------------ helpers

    def _map(self, ds, fn, arrow_blocks: bool = False, **kwargs):
        """A task-pool map of `fn` over numpy batches of `batch_size` rows, or with `arrow_blocks` over
        whole Arrow blocks as they come (no conversion; a map without a batch size also fuses into the
        read task, where one with a batch size gets its own tasks and reads the blocks back from the
        object store)."""
        import ray

        fmt, size = ("pyarrow", None) if arrow_blocks else ("numpy", self.cfg.batch_size)
        return ds.map_batches(fn, batch_format=fmt, batch_size=size, zero_copy_batch=arrow_blocks,
                              num_cpus=1, compute=ray.data.TaskPoolStrategy(size=self.cfg.workers), fn_kwargs=kwargs)

    def _score(self, ds, scorer):
        """A stateful scorer as a task map (ops.op_score): shipped once through the object store."""
        import ray

        return self._map(ds, ops.op_score, scorer_ref=ray.put(scorer))

    def _barrier(self, ds, what: str):
        t = time.time()
        ds = ds.materialize()
        self.log.info("%s: materialized in %.1fs (%d blocks)", what, time.time() - t, ds.num_blocks())
        return ds

    # ------------------------------------------------------------ plan

    def read(self):
        import ray

        from llmray.curate.sources import plan_reads, read_options

        tasks = plan_reads(self.cfg.sources, self.names, read_options(self.cfg))
        self.info["read_tasks"] = len(tasks)
        source = make_datasource(tasks, self.cfg.clean, self.cfg.output.keep_metadata, self.cfg.batch_size)
        return ray.data.read_datasource(source, override_num_blocks=len(tasks),
                                        compute=ray.data.TaskPoolStrategy(size=self.cfg.workers))

    def run_ops(self, ds):
        from llmray.curate import extract

        cfg = self.cfg
        # extract (HTML -> text) runs inside the warc read tasks (sources.read_options, extract.read_extractor)
        if cfg.clean.enabled:
            ds = self._map(ds, ops.op_clean, cfg=cfg.clean, sample_chars=self.sample_chars)
        if cfg.language.enabled:
            ds = self._map(ds, extract.op_language, cfg=cfg.language, sample_chars=self.sample_chars)
        if cfg.boilerplate.enabled:
            ds = self._boilerplate(ds)
        for op in ("gopher_quality", "gopher_repetition"):
            if getattr(cfg, op).enabled:
                ds = self._map(ds, ops.op_filter, op=op, cfg=getattr(cfg, op), sample_chars=self.sample_chars)
        if cfg.c4.enabled:
            ds = self._map(ds, ops.op_c4, cfg=cfg.c4, sample_chars=self.sample_chars)
        if cfg.fineweb.enabled:
            ds = self._map(ds, ops.op_filter, op="fineweb", cfg=cfg.fineweb, sample_chars=self.sample_chars)
        if cfg.toxicity.enabled:
            ds = self._toxicity(ds)
        if cfg.quality.enabled:
            ds = self._score(ds, ops.QualityUDF(self.quality_model, cfg.quality.threshold, self.sample_chars))
        if cfg.decontaminate.enabled:
            ds = self._decontaminate(ds)
        if cfg.pii.enabled:
            ds = self._map(ds, ops.op_pii, cfg=cfg.pii)
        if cfg.exact_dedup.enabled:
            ds = self._exact(ds)
        if cfg.near_dedup.enabled:
            ds = self._near(ds)
        if any(s.weight != 1.0 for s in cfg.sources):
            ds = self._map(ds, ops.op_mix, weights={n: s.weight for n, s in zip(self.names, cfg.sources)})
        return ds

    def prepare(self) -> None:
        """Driver-side setup that may fail fast on bad config: models, word lists, eval index."""
        cfg = self.cfg
        if any(s.type == "warc" for s in cfg.sources) and cfg.extract.enabled:
            from llmray.curate.extract import check_options

            check_options(cfg.extract.extractor, cfg.extract.options)
        if cfg.language.enabled and cfg.language.languages:
            from llmray.curate.extract import identifier

            unknown = sorted(set(cfg.language.languages) - set(identifier().nb_classes))
            if unknown:
                raise ValueError(f"language.languages: the py3langid model has no label {unknown}")
        if cfg.quality.enabled:
            from llmray.curate.quality import build

            t = time.time()
            self.quality_model, report = build(cfg.quality.model)
            report["train_s"] = round(time.time() - t, 2)
            self.info["quality_model"] = report
            self.log.info("quality model: %s", report)
        if cfg.toxicity.enabled:
            from llmray.curate.quality import build
            from llmray.curate.toxicity import load_word_lists

            self.tox_entries = load_word_lists(cfg.toxicity.word_lists)
            self.tox_model = None
            self.info["toxicity"] = {"entries": len(self.tox_entries)}
            if cfg.toxicity.classifier is not None:
                self.tox_model, report = build(cfg.toxicity.classifier)
                self.info["toxicity"]["classifier"] = report
        if cfg.decontaminate.enabled:
            from llmray.curate.decontam import build_index

            self.eval_index = build_index(cfg.decontaminate.eval_sets, cfg.decontaminate.ngram,
                                          getattr(self, "eval_stage_sets", None))
            self.info["decontamination"] = {k: dict(v) for k, v in self.eval_index.report.items()}

    def _toxicity(self, ds):
        c = self.cfg
        return self._score(ds, ops.ToxicityUDF(self.tox_entries, c.toxicity, self.tox_model, self.sample_chars))

    def _decontaminate(self, ds):
        import ray

        ref = ray.put(self.eval_index)
        return self._map(ds, ops.op_decontaminate, index_ref=ref, min_matches=self.cfg.decontaminate.min_matches,
                         sample_chars=self.sample_chars)

    def _shards(self, cls, n, *args):
        actors = dedup.make_actors(cls, n, *args)
        self.actors.extend(actors)
        return actors

    def _boilerplate(self, ds):
        import ray

        b = self.cfg.boilerplate
        shards = self._shards(dedup.KeyShard, self.cfg.workers)
        ds = self._barrier(self._map(ds, dedup.op_line_keys, shards=shards, min_chars=b.min_chars), "boilerplate")
        docs = ds.count()  # all rows; a fraction of the corpus is a soft bound anyway
        min_count = max(b.min_docs, int(b.min_fraction * docs + 0.999999))
        keys = dedup.boilerplate_keys(shards, min_count)
        self.info["boilerplate"] = {"lines": len(keys), "min_docs": min_count}
        self.log.info("boilerplate: %d distinct lines in >= %d documents", len(keys), min_count)
        return self._map(ds, ops.op_boilerplate_strip, boiler_ref=ray.put(keys), min_chars=b.min_chars,
                         sample_chars=self.sample_chars)

    def _exact(self, ds):
        import ray

        shards = self._shards(dedup.KeyShard, self.cfg.workers)
        ds = self._barrier(self._map(ds, dedup.op_exact_keys, shards=shards,
                                     normalize=self.cfg.exact_dedup.normalize), "exact_dedup")
        decision = dedup.exact_decision(shards)
        self.info["exact_dedup"] = {"duplicates": len(decision["loser"])}
        return self._map(ds, dedup.op_mark, op="exact_dedup", decision_ref=ray.put(decision),
                         sample_chars=self.sample_chars)

    def _near(self, ds):
        import ray

        from llmray.curate.minhash import candidate_probability, choose_bands

        nd = self.cfg.near_dedup
        bands, rows = (nd.bands, nd.rows) if nd.bands else choose_bands(nd.num_perm, nd.threshold, nd.target_recall)
        n = nd.shards or self.cfg.workers
        shards = self._shards(dedup.LSHShard, n, [(list(range(s, bands, n)),) for s in range(n)])
        params = {"num_perm": nd.num_perm, "ngram": nd.ngram, "seed": nd.seed, "hash": nd.hash,
                  "bands": bands, "rows": rows, "verify": nd.verify}
        t = time.time()
        ds = self._barrier(self._map(ds, dedup.op_near_keys, shards=shards, p=params), "near_dedup")
        decision, stats = dedup.near_decision(shards, nd.threshold, nd.verify, nd.num_perm,
                                              lambda ords: dedup.shingle_sets(ds, ords, params))
        stats.update(bands=bands, rows=rows, shards=n, duplicates=len(decision["loser"]),
                     candidate_prob_at_threshold=round(candidate_probability(nd.threshold, bands, rows), 5),
                     seconds=round(time.time() - t, 2))
        self.info["near_dedup"] = stats
        self.log.info("near_dedup: %s", stats)
        return self._map(ds, dedup.op_mark, op="near_dedup", decision_ref=ray.put(decision),
                         sample_chars=self.sample_chars)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors.clear()


def run_curate(cfg, ctx):
    """The stage body: returns a StageResult with the metrics and output paths."""
    from llmray.curate.accounting import write_outputs

    # Fixed cost: startup = the start -> the first block of records read (models, word lists, eval sets, Ray
    # Data's planning and first read task); work = from there to the plan's end (operators, barriers and
    # their global decisions, the scorer actors' start-up included); export = summaries and output files.
    cost = FixedCost()
    t0 = time.time()
    cur = Curator(cfg, ctx.log)
    if cfg.decontaminate.enabled and cfg.decontaminate.eval_stages:  # lm-eval task documents as eval sets
        from llmray.eval.contamination import eval_stage_sets

        cur.eval_stage_sets = eval_stage_sets(cfg.decontaminate.eval_stages, ctx)
    cur.prepare()
    try:
        with data_context(cfg.workers):
            # Docs in / kept so far, for the console and tracking while the plan runs (curate/progress.py).
            progress = CurateProgress(cur, ctx.metrics_writer())
            t_plan = time.time()
            with progress:
                ds = progress.tap_out(cur.run_ops(progress.tap_in(cur.read())))
                final = cur._barrier(ds, "final")
            t_end = time.time()
            cost.work(progress.first_read_at() or t_plan, t_end)
            cost.add("startup", cost.uncovered())
            with cost.phase("export"):
                result = write_outputs(final, cfg, cur, ctx.out_dir, ctx.log)
                progress.finish(result.metrics)
    finally:
        cur.close()
    result.metrics["fixed_cost"] = cost.metrics(work_s=cost.work_s())
    elapsed = time.time() - t0
    result.metrics["elapsed_s"] = round(elapsed, 2)
    result.metrics["docs_per_s"] = round(result.metrics["docs_in"] / max(elapsed, 1e-9), 1)
    ctx.log.info("curate: %s", {k: result.metrics[k] for k in ("docs_in", "docs_out", "quarantined", "elapsed_s")})
    return result
