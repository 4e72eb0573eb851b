"""llmray: one declarative pipeline.yaml from raw text to a served, aligned LLM, on Ray."""

__version__ = "0.1.0"
