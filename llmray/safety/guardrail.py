"""The output guardrail: P(unsafe) = P(request is harmful) x P(response complies), two hashed
n-gram logistic regressions, trained in the align stage and screened by the serve app.

Features (numpy only, no tokenizer, so one call costs well under a millisecond):
  prompt: lower-cased head and tail (where injected instructions hide);
  response: lower-cased head (where refusals and compliance show), plus, with
  `refusal_feature`, one feature that is 1 when the reply opens like a refusal by the rule judge
  (`instruct.is_refusal`), so refusal words inside other text do not pass for a refusal;
  each side -> word 1..`word_ngrams`-grams (crc32 of each word, n-grams combined
  arithmetically) and character n-grams of the orders in `char_ngrams` (rolling polynomial
  hash) -> a 64-bit mix -> index mod 2**dim_bits; binary presence, L2-normalised.
Two heads: `prompt` (harmful vs benign request) and `response` (complies vs refuses).
Factored rather than one linear model over both sides, because a joint linear model lets
refusal-like words in a non-refusal outvote a harmful request (seen on half-tuned models).
flagged = P(harmful) * P(complies) >= threshold; `reason` gives both factors.

Export (`save`): `config.json` (format, feature spec, threshold, refusal text, training
figures) + `weights.safetensors` ({"w_prompt", "w_response": float32[2**dim_bits],
"b": float32[2]}). No pickle. `load_guardrail(dir)` reads it back.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

from llmray.data.instruct import is_refusal

FORMAT = "llmray-guardrail"
FORMAT_VERSION = 1
_WORD = re.compile(r"[a-z0-9_]+(?:'[a-z]+)?|[^\sa-z0-9_]")
_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_P = np.uint64(1000003)
_S33 = np.uint64(33)


def _mix(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser: spreads arithmetic n-gram codes over all bits."""
    x = x ^ (x >> _S33)
    x = x * _M1
    x = x ^ (x >> _S33)
    x = x * _M2
    return x ^ (x >> _S33)


@dataclass(frozen=True)
class FeatureSpec:
    dim_bits: int = 18
    word_ngrams: int = 2
    char_ngrams: tuple[int, ...] = (4,)
    prompt_chars: int = 600
    response_chars: int = 400
    refusal_feature: bool = True

    def to_json(self) -> dict:
        return {"dim_bits": self.dim_bits, "word_ngrams": self.word_ngrams, "char_ngrams": list(self.char_ngrams),
                "prompt_chars": self.prompt_chars, "response_chars": self.response_chars,
                "refusal_feature": self.refusal_feature}

    @classmethod
    def from_json(cls, d: dict) -> FeatureSpec:
        return cls(dim_bits=int(d["dim_bits"]), word_ngrams=int(d["word_ngrams"]),
                   char_ngrams=tuple(int(n) for n in d["char_ngrams"]), prompt_chars=int(d["prompt_chars"]),
                   response_chars=int(d["response_chars"]), refusal_feature=bool(d["refusal_feature"]))


def _side(text: str, salt: int, spec: FeatureSpec) -> np.ndarray:
    """Hashed feature indices (unique) of one side of the conversation."""
    codes = []
    words = _WORD.findall(text)
    if words:
        u = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        h = u.copy()
        for n in range(1, spec.word_ngrams + 1):
            if n > 1:
                if len(u) < n:
                    break
                h = h[:-1] * _P + u[n - 1:]
            codes.append(h ^ np.uint64(salt * 131 + n))
    if spec.char_ngrams:
        c = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        for n in spec.char_ngrams:
            if len(c) < n:
                continue
            h = c[: len(c) - n + 1].copy()
            for j in range(1, n):
                h = h * _P + c[j: len(c) - n + 1 + j]
            codes.append(h ^ np.uint64(salt * 131 + 64 + n))
    if not codes:
        return np.zeros(0, dtype=np.int64)
    mask = np.uint64((1 << spec.dim_bits) - 1)
    return np.unique((_mix(np.concatenate(codes)) & mask).astype(np.int64))


def _refusal_index(dim_bits: int) -> int:
    code = np.array([zlib.crc32(b"__rule:is_refusal__")], dtype=np.uint64) ^ np.uint64(2 * 131 + 99)
    return int((_mix(code) & np.uint64((1 << dim_bits) - 1))[0])


def _normed(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return idx, np.full(len(idx), 1 / np.sqrt(max(1, len(idx))))


def prompt_features(prompt: str, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the request: its head and tail, where injected instructions hide."""
    p = prompt.lower()
    if len(p) > spec.prompt_chars:
        half = spec.prompt_chars // 2
        p = p[:half] + " " + p[-half:]
    return _normed(_side(p, 1, spec))


def response_features(response: str, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of the reply's head, plus the rule's refusal feature."""
    idx, val = _normed(_side(response.lower()[: spec.response_chars], 2, spec))
    if spec.refusal_feature and is_refusal(response):
        idx, val = np.append(idx, _refusal_index(spec.dim_bits)), np.append(val, 1.0)
    return idx, val


# Flag when P(harmful request) x P(complies) reaches this. On the built-in held-out pairs (unseen
# intents and jailbreak wrappers): 0.5 -> recall 0.68; 0.4 -> recall 0.94, false-positive rate
# 0.008, everyday questions flagged 0.000; 0.3 -> recall 1.0, false-positive rate 0.08.
DEFAULT_THRESHOLD = 0.4


@dataclass(frozen=True)
class ScreenResult:
    flagged: bool
    score: float
    reason: str


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + np.exp(-z)))


@dataclass
class Guardrail:
    w_prompt: np.ndarray
    w_response: np.ndarray
    b: tuple[float, float]
    spec: FeatureSpec
    threshold: float = DEFAULT_THRESHOLD
    refusal: str = ""
    info: dict = field(default_factory=dict)

    def parts(self, prompt: str, response: str) -> tuple[float, float]:
        """(P(request is harmful), P(response complies))."""
        ip, vp = prompt_features(prompt, self.spec)
        ir, vr = response_features(response, self.spec)
        return (_sigmoid(float(self.w_prompt[ip] @ vp) + self.b[0]),
                _sigmoid(float(self.w_response[ir] @ vr) + self.b[1]))

    def score(self, prompt: str, response: str) -> float:
        harm, comply = self.parts(prompt, response)
        return harm * comply

    def screen(self, prompt: str, response: str) -> ScreenResult:
        """Is this response to this prompt unsafe? (flagged, P(unsafe), why)."""
        harm, comply = self.parts(prompt, response)
        score = harm * comply
        if score < self.threshold:
            return ScreenResult(False, score, "")
        return ScreenResult(True, score, f"unsafe p={score:.2f}: request reads as harmful (p={harm:.2f}) and "
                                         f"the response is not a refusal (p={comply:.2f})")

    def refusal_text(self) -> str:
        """What a guarded endpoint returns instead of a flagged response."""
        return self.refusal

    def save(self, out_dir: Path) -> Path:
        from safetensors.numpy import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({"w_prompt": self.w_prompt.astype(np.float32), "w_response": self.w_response.astype(np.float32),
                   "b": np.array(self.b, dtype=np.float32)}, str(out_dir / "weights.safetensors"))
        cfg = {"format": FORMAT, "version": FORMAT_VERSION, "features": self.spec.to_json(),
               "threshold": self.threshold, "refusal_text": self.refusal, "info": self.info}
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        return out_dir


def load_guardrail(path: str | Path) -> Guardrail:
    """Load a guardrail exported by an align stage (`<align stage>/guardrail/`)."""
    from safetensors.numpy import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("format") != FORMAT or cfg.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} folder (format {cfg.get('format')!r}, "
                         f"version {cfg.get('version')!r})")
    tensors = load_file(str(path / "weights.safetensors"))
    spec = FeatureSpec.from_json(cfg["features"])
    wp, wr = tensors["w_prompt"].astype(np.float64), tensors["w_response"].astype(np.float64)
    if wp.shape != (1 << spec.dim_bits,) or wr.shape != wp.shape or tensors["b"].shape != (2,):
        raise ValueError(f"{path}: weight shapes {wp.shape}, {wr.shape}, {tensors['b'].shape} do not match "
                         f"the feature spec ({1 << spec.dim_bits} features, 2 biases)")
    return Guardrail(w_prompt=wp, w_response=wr, b=(float(tensors["b"][0]), float(tensors["b"][1])), spec=spec,
                     threshold=float(cfg["threshold"]), refusal=cfg["refusal_text"], info=cfg.get("info", {}))


# ---------------------------------------------------------------- training and evaluation


def _design(feats: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.concatenate([np.full(len(idx), i) for i, (idx, _) in enumerate(feats)])
    return rows, np.concatenate([f[0] for f in feats]), np.concatenate([f[1] for f in feats])


def balanced_weights(y: np.ndarray, part: np.ndarray | None = None) -> np.ndarray:
    """Sample weights: each class contributes half of the loss whatever the mix; within a class,
    each `part` (e.g. templated requests vs everyday questions) an equal share of its half."""
    part = np.zeros(len(y), dtype=int) if part is None else np.asarray(part)
    sw = np.zeros(len(y))
    for cls in (0, 1):
        keys = np.unique(part[y == cls])
        for k in keys:
            sel = (y == cls) & (part == k)
            sw[sel] = 0.5 / len(keys) / sel.sum()
    return sw


def fit_logreg(feats: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray, dim: int, steps: int, lr: float,
               l2: float, sw: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Full-batch Adam on weighted (default: class-balanced) logistic loss + L2 (sparse design
    matrix in numpy)."""
    rows, cols, vals = _design(feats)
    n = len(y)
    sw = balanced_weights(y) if sw is None else sw
    # A weight whose feature no example has gets no gradient, and Adam leaves it at 0: fit only the
    # used columns (~47k of 262k for the built-in pairs), with scipy's CSR products (2.7x numpy's
    # bincount here; the same sums up to float rounding order, ~1e-15).
    used, local = np.unique(cols, return_inverse=True)
    x = csr_matrix((vals, (rows, local)), shape=(n, len(used)))
    xt = x.T.tocsr()
    w, b = np.zeros(len(used)), 0.0
    m, v, mb, vb = np.zeros(len(used)), np.zeros(len(used)), 0.0, 0.0
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        z = x @ w + b
        g = sw * (1.0 / (1.0 + np.exp(-z)) - y)
        gw = xt @ g + l2 * w
        gb = g.sum()
        m, v = b1 * m + (1 - b1) * gw, b2 * v + (1 - b2) * gw * gw
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb * gb
        c1, c2 = 1 - b1**t, 1 - b2**t
        w -= lr * (m / c1) / (np.sqrt(v / c2) + eps)
        b -= lr * (mb / c1) / (np.sqrt(vb / c2) + eps)
    full = np.zeros(dim)
    full[used] = w
    return full, float(b)


def train_guardrail(pairs: list[dict], spec: FeatureSpec, steps: int = 300, lr: float = 0.1, l2: float = 1e-4,
                    threshold: float = DEFAULT_THRESHOLD, refusal: str = "") -> Guardrail:
    """Fit both heads on labelled pairs ({"prompt", "response", "harmful", "complies"})."""
    dim = 1 << spec.dim_bits
    prompts = {p["prompt"]: (p["harmful"], "everyday" in p.get("group", "")) for p in pairs}  # each once
    y = np.array([h for h, _ in prompts.values()], float)
    # Everyday questions are a part of the harmless class of their own, so they do not crowd out
    # the harmless twins of the harmful requests (which teach the head what makes a request harmful).
    wp, bp = fit_logreg([prompt_features(t, spec) for t in prompts], y, dim, steps, lr, l2,
                        balanced_weights(y, np.array([e for _, e in prompts.values()], int)))
    wr, br = fit_logreg([response_features(p["response"], spec) for p in pairs],
                        np.array([p["complies"] for p in pairs], float), dim, steps, lr, l2)
    return Guardrail(w_prompt=wp, w_response=wr, b=(bp, br), spec=spec, threshold=threshold, refusal=refusal)


def assess(g: Guardrail, pairs: list[dict]) -> dict:
    """Accuracy, precision, recall (unsafe = positive), false-positive rate, per group; screen latency."""
    times, preds = [], []
    for p in pairs:
        t0 = time.perf_counter()
        res = g.screen(p["prompt"], p["response"])
        times.append(time.perf_counter() - t0)
        preds.append(int(res.flagged))
    y = np.array([p["label"] for p in pairs])
    pr = np.array(preds)
    tp, fp = int(((pr == 1) & (y == 1)).sum()), int(((pr == 1) & (y == 0)).sum())
    fn, tn = int(((pr == 0) & (y == 1)).sum()), int(((pr == 0) & (y == 0)).sum())
    groups: dict[str, list[int]] = {}
    for p, ok in zip(pairs, pr == y):
        groups.setdefault(p["group"], []).append(int(ok))
    us = np.array(times) * 1e6
    return {"n": len(pairs), "accuracy": (tp + tn) / max(1, len(pairs)), "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn), "false_positive_rate": fp / max(1, fp + tn),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "by_group": {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())},
            "latency_us_p50": float(np.percentile(us, 50)), "latency_us_p99": float(np.percentile(us, 99))}
