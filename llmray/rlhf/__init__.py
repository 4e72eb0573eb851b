"""RLHF on Ray: PPO and GRPO with rollout-engine, reward, reference and trainer actors.

config.py (pydantic blocks, light) · actors.py (RayActorGroup) · rollout.py (vLLM / transformers
engines, weight sync) · trainer.py (policy/reference and critic/reward actors) · algos.py (the
math) · batch.py (padded layout) · data.py (prompts) · rewards.py (built-in reward functions,
`module:function` references) · scoring.py (reward models + function worker pool, weighted) ·
driver.py (the loop). The stage kinds
`ppo` and `grpo` (llmray/stages/) are thin Configs over `driver.run_rl`.
"""
