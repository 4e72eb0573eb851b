"""The run report in a real headless Chromium: the rendered DOM after scripts (`--dump-dom`) checked
against the run directory, a screenshot (`--screenshot`), and the serve playground's round trip.

These tests fail (not skip) when Chromium is missing: CI installs it
(`apt-get install -y chromium chromium-driver`); LLMRAY_CHROMIUM may name another binary.
`check_report_in_browser(run_dir, tmp_path)` works on any run directory, e.g. the real quickstart run.
Set LLMRAY_REPORT_SCREENSHOT=/some/file.png to keep the screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from test_report import build_run, num, parse

from llmray.report import playground_html, render_report, write_report
from llmray.report.html import sample_answer, sample_column


def chromium() -> str:
    exe = os.environ.get("LLMRAY_CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    if not exe or not shutil.which(exe):
        pytest.fail(
            "headless Chromium is needed for the report tests and was not found: "
            "apt-get install -y chromium chromium-driver (or set LLMRAY_CHROMIUM)"
        )
    return exe


def run_chromium(tmp_path: Path, *args: str, timeout: int = 60) -> str:
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


MUST_PLOT = {
    "loss",
    "val_loss",
    "reward_mean",
    "kl",
    "accuracy",
    "val_accuracy",
    "reward_margin",
    "policy_loss",
    "value_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "response_len",
    "entropy",
}


def _count_numeric(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                counts[k] = counts.get(k, 0) + 1
    return counts


def check_report_in_browser(run: Path, tmp_path: Path) -> Path:
    """Render `run`'s report in headless Chromium and check it against the run directory itself:
    every stage's status, the funnel, the headline tiles, every curve's point count (recounted from
    metrics.jsonl here) and the sample answers. Usable on any run (e.g. the real quickstart run).
    Returns the path of a full-width screenshot."""
    path, _ = write_report(run)
    url = path.resolve().as_uri()
    doc = parse(run_chromium(tmp_path, "--dump-dom", url))
    assert doc.find("html").attrs.get("data-ready") == "1", "the page script did not run to the end"
    for chart in doc.find_all("svg", **{"class": "chart"}):  # every chart has a title, axes and labels
        assert chart.find_all("title") and chart.find_all("text", **{"class": "chart-title"})
        assert chart.find_all("line", **{"class": "axis x-axis"}) and chart.find_all(
            "text", **{"class": "axis-label x-label"}
        )
    for man_path in sorted(run.glob("*/manifest.json")):
        man = json.loads(man_path.read_text())
        name, metrics = man["name"], man.get("metrics") or {}
        section = doc.find("section", id=f"stage-{name}")
        assert section.attrs["data-status"] == man["status"]
        assert section.find("code", data_field="fingerprint").text == man["fingerprint"][:12]
        for f in metrics.get("funnel") or []:
            bar = doc.find("svg", id=f"funnel-{name}").find("g", data_op=f["op"])
            assert (int(bar.attrs["data-in"]), int(bar.attrs["data-out"])) == (f["in"], f["out"])
            assert num(bar.find("text", **{"class": "bar-value"}).text) == f["out"]
        for tile in section.find_all("div", **{"class": "tile"}):
            want = metrics[tile.attrs["data-metric"]]
            assert float(tile.attrs["data-value"]) == want
            assert num(tile.find("div", **{"class": "tile-v"}).text) == pytest.approx(want, rel=1e-3)
        live = run / ".staging" / name if man["status"] == "running" else man_path.parent
        counts = _count_numeric(
            [
                json.loads(line)
                for line in (live / "metrics.jsonl").read_text().splitlines()
                if line.endswith("}")
            ]
            if (live / "metrics.jsonl").exists()
            else []
        )
        series = section.find_all("g", **{"class": "series"})
        assert bool(series) == bool(set(counts) - {"step", "iteration", "time"}), name
        for g in series:
            assert int(g.attrs["data-n"]) == counts[g.attrs["data-series"]], (name, g.attrs["data-series"])
        plotted = {g.attrs["data-series"] for g in series}
        assert set(counts) & MUST_PLOT <= plotted, f"{name}: not plotted {set(counts) & MUST_PLOT - plotted}"
        rows = {r.find("th").text: r for r in doc.find("section", id="samples").find_all("tr")[1:]} \
            if metrics.get("samples") else {}
        for sample in metrics.get("samples") or []:
            got = rows[sample["prompt"]].find("td", data_stage=sample_column(name, sample)).text
            assert got == sample_answer(sample)[:2000], (name, got, sample_answer(sample)[:2000])
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", url)
    assert png_size(shot) == (1280, 2400)
    assert shot.stat().st_size > 50_000, "screenshot looks blank"
    return shot


@pytest.mark.integration  # a headless Chromium (~3 s): not in the fast tier
def test_report_in_headless_chromium(tmp_path):
    run = build_run(tmp_path / "runs")
    shot = check_report_in_browser(run, tmp_path)
    doc = parse((run / "report.html").read_text())
    assert len(doc.find_all("svg", **{"class": "chart"})) >= 15
    if os.environ.get("LLMRAY_REPORT_SCREENSHOT"):  # keep it for a human to look at
        shutil.copy(shot, os.environ["LLMRAY_REPORT_SCREENSHOT"])


class _CompareHandler(BaseHTTPRequestHandler):
    """Stands in for the serve app: the report with the playground at `/`, and `POST /v1/compare`."""

    page = ""

    def do_GET(self):
        body = self.page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        results = [
            {"model": m, "error": "model not loaded"}
            if m.endswith("rm")
            else {"model": m, "text": f"{m} says {req['prompt'][::-1]} ({req['max_tokens']})"}
            for m in req["models"]
        ]
        body = json.dumps({"results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.integration  # a headless Chromium (~3 s): not in the fast tier
def test_playground_round_trip_in_headless_chromium(tmp_path):
    run = build_run(tmp_path / "runs", running=False)
    ids = ["quickstart/chat", "quickstart/dpo", "quickstart/rm", "quickstart/ppo"]
    _CompareHandler.page = render_report(run, playground=playground_html(ids))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CompareHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = (
            f"http://127.0.0.1:{server.server_port}/?prompt=abc&max_tokens=7&run=1"
            "&models=quickstart/chat,quickstart/dpo,quickstart/rm"
        )
        doc = parse(run_chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", url))
    finally:
        server.shutdown()
    assert doc.find("section", id="playground").attrs.get("data-state") == "done"
    cards = {c.attrs["data-model"]: c for c in doc.find_all("div", **{"class": "pg-result"})}
    assert list(cards) == ids[:3]  # ppo was not asked for in the link
    assert cards["quickstart/chat"].find("pre").text == "quickstart/chat says cba (7)"
    assert cards["quickstart/rm"].attrs["data-state"] == "error"
    assert doc.find("table", id="overview")  # the report is still there under the playground
