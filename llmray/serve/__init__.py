"""Serving: every completed stage's `model/` behind one OpenAI-compatible endpoint on Ray Serve.

Request flow:
  HTTP client (openai SDK, curl) --> Serve proxy (127.0.0.1:<port>)
  --> `app.OpenAIIngress` (FastAPI: auth, body/parameter caps, model lookup, guardrail, SSE)
  --DeploymentHandle--> one `app.ModelServer` deployment per served stage
  --> `engines.ModelRunner` (chat template, prompt-length check) --> an engine:
      `vllm_engine.VLLMEngine` (vLLM AsyncLLM) or `hf_engine.HFEngine` (transformers, `@serve.batch`).

Modules: `protocol` (OpenAI request parsing, responses, error JSON; no Ray), `spec` (which stages
are served, the align gate, the default model), `engines` / `hf_engine` / `vllm_engine`,
`guardrail` (output screening hook), `app` (Ray Serve deployments and the application builder
`build_app` used by `serve run serve/quickstart.yaml`), `launch` (`llmray serve`, `llmray compare`).
Only `launch`'s CLI entry points and `spec` are imported without Ray/torch.
"""
