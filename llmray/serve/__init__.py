"""Serving: every completed stage's `model/` behind one OpenAI-compatible endpoint on Ray Serve.

Request flow:
  HTTP client (openai SDK, curl) --> Serve proxy (127.0.0.1:<port>)
  --> `app.OpenAIIngress` (FastAPI: auth, body/parameter caps, model lookup, guardrail, SSE)
  --> `host.ModelHost` (the model's versions): in the ingress replica itself when one model and no
      served names are served (`host.InProcess`), else one `app.ModelServer` deployment per served
      stage and name, reached through a DeploymentHandle (`host.Remote`)
  --> `engines.ModelRunner` (chat template, prompt-length check) --> an engine:
      `vllm_engine.VLLMEngine` (vLLM AsyncLLM) or `hf_engine.HFEngine` (transformers, `@serve.batch`).

Modules: `protocol` (OpenAI request parsing, responses, error JSON; no Ray), `spec` (which stages
are served, the align gate, the default model), `engines` / `hf_engine` / `vllm_engine`,
`guardrail` (output screening hook), `host` (a model's versions and how the ingress calls it),
`replica` (replica resources and Serve options), `app` (Ray Serve deployments and the application builder
`build_app` used by `serve run serve/quickstart.yaml`), `launch` (`llmray serve`, `llmray compare`).
Only `launch`'s CLI entry points and `spec` are imported without Ray/torch.
"""
