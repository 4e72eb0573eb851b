"""Shared fixtures: one real local Ray per test session (2 CPUs, small object store, loopback)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from llmray.testing import free_port

# Shared test helpers (tests/support/): `from cli import llmray`, the runner tests' `probe_stage` kind,
# the tiny pipeline file. On sys.path so test modules and the stage registry import them by name.
sys.path.insert(0, str(Path(__file__).parent / "support"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on 127.0.0.1
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Ray workers (Ray Train's, PPO's trainers) that write checkpoints to the tests' S3 server inherit
# the environment of the session's Ray: dummy credentials, and no EC2 metadata lookups.
for _k, _v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
               ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_k, _v)
# `LLMRAY_CPU_PROFILE=<file> make test`: each test's wall time and the machine's CPU time meanwhile,
# one JSON line per test (tests/support/cpu_profile.py, which also prints the report).
if os.environ.get("LLMRAY_CPU_PROFILE"):
    from cpu_profile import pytest_runtest_protocol  # noqa: F401 - a hook: pytest finds it here
# Under pytest-xdist (`make test WORKERS=2`) every worker's session starts a local Ray and Serve
# of its own. Serve's HAProxy binds the same two ports (stats 8404, metrics 9101) in every Serve
# instance, so a second instance on the machine dies at start ("Address already in use"): each worker
# hands its Ray, whose processes inherit this environment, ports of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        os.environ.setdefault(_k, str(free_port("0.0.0.0")))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray: 2 CPUs, 512 MiB object store, no dashboard, started the way `llmray run` starts
    one (llmray.rayutil.init_ray): no job-level runtime env; the workers inherit this process's
    environment (the switches set above). A job-level env_vars block made every Ray Data execution and
    RL role actor wait for fresh worker processes: tests/test_tokenize.py, test_tokenizer.py,
    test_rewards.py and test_rlhf_fixed_cost.py took 154 s with it, 95 s without (back to back)."""
    import ray

    from llmray.config import RayConfig
    from llmray.rayutil import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=512))
    yield ray
    # The session ends with the interpreter; ray.shutdown here would race later session fixtures.


@pytest.fixture(scope="session")
def serve_port(ray_local):
    """The loopback port of the session's one Ray Serve instance. Serve's HTTP port is fixed when Serve
    starts, so every in-process serve test passes this port: the first `start_serving` starts Serve
    (controller, proxy), later modules deploy their applications on the same instance and delete only
    their own at teardown (`stop_serving`), which saves a Serve start and shutdown (~10 s) per module."""
    from ray import serve

    yield free_port()
    serve.shutdown()  # stops the proxy's HAProxy process too, which killing the actors would leave behind


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A BPE tokenizer (vocab 1024) trained on stdlib docstrings, with the llmray chat template."""
    from llmray.testing import tiny_tokenizer

    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random tiny LlamaForCausalLM in HF format (safetensors + tokenizer + generation config)."""
    from llmray.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("causal"), "causal", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A random tiny LlamaForSequenceClassification (1 label) in HF format."""
    from llmray.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("reward"), "reward", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def guardrail():
    """The output guardrail trained on the built-in labelled pairs (400 steps, seconds): one per session,
    shared by the guardrail and gate tests, which only read it."""
    from llmray.data.instruct import REFUSALS
    from llmray.data.pairs import labelled_pairs
    from llmray.safety.guardrail import FeatureSpec, train_guardrail

    return train_guardrail(labelled_pairs("train"), FeatureSpec(), steps=400, refusal=REFUSALS[0])


@pytest.fixture(scope="session")
def s3_endpoint():
    """("127.0.0.1:<port>", pyarrow S3FileSystem) of a real S3-compatible server (moto's), offline."""
    import logging

    from moto.server import ThreadedMotoServer
    from pyarrow.fs import S3FileSystem

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}", S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                                            region="us-east-1", allow_bucket_creation=True)
    server.stop()


# Test tiers. `integration`: the test starts (or joins) Ray, a server, a browser, or a CLI run that does,
# or it works for seconds (trains a tiny model, spawns Python processes: marked one by one, with the
# reason), so that the fast tier stays under a minute. Set automatically for every test using the
# `ray_local` fixture (directly or through another fixture), and by `pytestmark = pytest.mark.integration`
# in files that start Ray another way. `make test-fast` runs
# `-m "not slow and not integration"` with RAY_ADDRESS set to an invalid address, so a test that starts
# Ray without saying so fails there at once instead of silently making the fast tier slow.
#
# Parallel runs (`make test WORKERS=2`: `pytest -n 2 --dist loadgroup`, pytest-xdist): each worker is
# its own session, with its own local Ray, Serve and session fixtures. Tests are handed out a file at a
# time (each file's module fixtures are built once, on one worker), except that every test on the
# session's Ray Serve (`serve_port`) or on a vLLM engine runs on one worker, in the "serve" group: Serve
# then starts once in the whole run, and two vLLM engines never start at once (each wants ~2 GB and
# both cores for ~20 s). Without --dist loadgroup no group is set.
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the xdist_group marks into work units
def pytest_collection_modifyitems(config, items):
    grouped = getattr(config.option, "dist", None) == "loadgroup"  # set only with pytest-xdist's --dist
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "ray_local" in names:
            item.add_marker(pytest.mark.integration)
        if grouped and item.get_closest_marker("xdist_group") is None:
            serve = "serve_port" in names or item.get_closest_marker("vllm") is not None
            item.add_marker(pytest.mark.xdist_group("serve" if serve else item.path.name))
