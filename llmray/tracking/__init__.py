"""Experiment tracking and the live console of `llmray run`.

- tracker.py: `Tracker`, driven by the runner (pipeline and stage start/end, cached stages) and fed by
  the stages' metrics.jsonl (tailed live); it fans out to the backends and to listeners.
- backends.py: MLflow (default, embedded SQLite store in the run directory or a server), TensorBoard
  event files (tensorboardX), Weights & Biases (offline or online).
- console.py: `Console` (live lines on a terminal, steady plain lines otherwise) and the filter that
  keeps Ray's chatter out of the console and in the stage's log.txt.

The `tracking:` block of the pipeline file is `llmray.config.TrackingConfig`; a stage's `tracking:`
field (`StageTracking`) switches backends per stage.
"""

from llmray.tracking.tracker import STATE_FILE, Tracker, TrackingUnavailable, notify

__all__ = ["STATE_FILE", "Tracker", "TrackingUnavailable", "notify"]
