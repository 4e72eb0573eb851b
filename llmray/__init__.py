"""llmray: one declarative pipeline.yaml from raw text to a served, aligned LLM, on Ray.

Importing the package keeps scikit-learn out of transformers' generation import in this process
(`llmray.hf_imports`: 1.5-2.5 s of every model-loading process's start)."""

from llmray import hf_imports

__version__ = "0.1.0"
hf_imports.install()
