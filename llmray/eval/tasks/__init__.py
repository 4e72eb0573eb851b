"""The built-in lm-eval tasks: YAMLs, their JSONL data (made by `python -m llmray.eval.builtin`) and the
loader their `custom_dataset` names. The eval stage passes this folder to lm-eval's TaskManager as an
`include_path`; `lm_eval --include_path <this folder> --tasks llmray` runs them outside llmray too."""
