"""What `llmray.hf_imports` saves: seconds for a fresh interpreter to import llmray, torch and a transformers
model class, with the switch on (default) and off (LLMRAY_TRANSFORMERS_SKLEARN=1), alternating in one run.

    .venv/bin/python bench/bench_hf_imports.py --rounds 5      # ~1.5 min on 2 cores

Each round starts one interpreter per side; the figure is the wall time of the imports inside it (the
interpreter's own start is the same on both sides). Prints each round and the medians; bench/README.md
"Fixed costs" has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PROBE = """
import json, sys, time
t = time.perf_counter()
import llmray, torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM
print(json.dumps({"s": time.perf_counter() - t, "sklearn": "sklearn" in sys.modules, "pandas": "pandas" in sys.modules}))
"""


def one(switch_off: bool) -> dict:
    env = {**os.environ, "LLMRAY_TRANSFORMERS_SKLEARN": "1" if switch_off else "0"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    on, off = [], []
    for r in range(args.rounds):
        if r % 2 == 0:  # alternate which side starts first
            a, b = one(False), one(True)
        else:
            b, a = one(True), one(False)
        on.append(a["s"])
        off.append(b["s"])
        print(f"round {r + 1}: on {a['s']:.2f} s (sklearn {a['sklearn']}, pandas {a['pandas']}), "
              f"off {b['s']:.2f} s (sklearn {b['sklearn']}, pandas {b['pandas']})", flush=True)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"median: on {m_on:.2f} s, off {m_off:.2f} s, saved {m_off - m_on:.2f} s a process ({m_on / m_off:.2f}x)")


if __name__ == "__main__":
    main()
