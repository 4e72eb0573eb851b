"""A user's own reward function for examples/bring-your-own.yaml (`reward: examples.byo_rewards:...`).

Called in llmray's reward worker actors as fn(prompt, completion, **record_fields) -> float; the
`builtin:arithmetic` prompts carry a `reference` answer. A function that raises or returns a
non-number scores 0 for that sample and is counted (`metrics.reward_errors`), it does not stop the run.
"""

from llmray.rlhf.rewards import exact_match, format_check


def answer_with_format(prompt: str, completion: str, reference: str | None = None, **_) -> float:
    """1 for the right number, plus a small bonus for ending with `Answer: <number>` as asked."""
    return exact_match(prompt, completion, reference=reference) + 0.2 * format_check(prompt, completion)
