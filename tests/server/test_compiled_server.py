"""The server as it starts by default: slots layout, compiled step warmed up before /health.

Real `python -m server` processes. The compiled server must answer exactly what an eager server
on the padded layout answers (seeded sampling included), stream, and say in /info what it runs.
"""

from __future__ import annotations

import httpx

from clients.sse import iter_events
from server.process import running_server

REQUESTS = [
    {"inputs": "12+34=", "parameters": {"max_new_tokens": 12, "details": True}},
    {
        "inputs": "5+7=",
        "parameters": {"max_new_tokens": 10, "do_sample": True, "temperature": 1.5, "seed": 7},
    },
]


def answers(url: str) -> list[str]:
    return [
        httpx.post(f"{url}/generate", json=body, timeout=60).json()["generated_text"]
        for body in REQUESTS
    ]


def test_a_compiled_server_answers_as_an_eager_padded_one_and_says_so(tiny_checkpoint_dir):
    with running_server(
        tiny_checkpoint_dir,
        startup_timeout=240,
        compile="true",
        kv_layout="auto",
        threads=1,
        log_level="info",
    ) as compiled:
        info = httpx.get(f"{compiled.url}/info").json()
        assert (info["kv_layout"], info["compiled_step"], info["threads"]) == ("slots", True, 1)
        assert "compiling the decode step" in compiled.logs()
        fast = answers(compiled.url)
        with httpx.stream(
            "POST", f"{compiled.url}/generate_stream", json={**REQUESTS[0]}, timeout=60
        ) as response:
            events = list(iter_events(response.iter_bytes()))
        assert events[-1].json()["generated_text"] == fast[0]
    with running_server(tiny_checkpoint_dir, compile="false", kv_layout="padded") as eager:
        info = httpx.get(f"{eager.url}/info").json()
        assert (info["kv_layout"], info["compiled_step"]) == ("padded", False)
        assert answers(eager.url) == fast


def test_without_a_compiler_the_server_decodes_eagerly_and_says_so(tiny_checkpoint_dir):
    env = {"CXX": "/nonexistent/g++"}  # inductor's C++ compiler on CPU
    with running_server(
        tiny_checkpoint_dir, startup_timeout=240, env=env, compile="true", log_level="info"
    ) as server:
        info = httpx.get(f"{server.url}/info").json()
        assert (info["kv_layout"], info["compiled_step"]) == ("slots", False)
        assert "the decode step stays eager" in server.logs()
        assert answers(server.url)[0]
