"""The `curate` stage's implementation: sources, cleaning, filters, scoring, dedup, decontamination.

The stage module `llmray.stages.curate` holds the config and calls `llmray.curate.pipeline.run_curate`,
which wires these modules into a streaming Ray Data pipeline. Importing this package is light
(no Ray); submodules import numpy/pyarrow/ray where they need them.
"""
