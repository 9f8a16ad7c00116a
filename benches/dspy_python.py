"""Python DSPy against an OpenAI-compatible server on one GGUF file: with
--base-url, a running one (dsrs-local serve, llama-server); without, the
llama-cpp-python server it starts itself (the documented way DSPy users run a
local model). Run by the `bench` example (examples/bench) with the venv from
benches/setup-peers.sh; prints progress on stderr and one JSON line on stdout.

Measures the same workload as the Rust side: QA with 4 demos, a new question
per call, greedy, at most --max-tokens reply tokens; the median of --runs lone
calls, then --examples calls through DSPy's own parallel `batch`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

import dspy
import llama_cpp


class QA(dspy.Signature):
    """Answer the question in a few words."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


DEMOS = [
    ("What is the capital of France?", "Paris"),
    ("What is 2 + 2?", "4"),
    ("Which planet is largest?", "Jupiter"),
    ("Who wrote Hamlet?", "Shakespeare"),
]


def question(i):
    return f"What is the capital of country number {i}?"


def start_server(args):
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", args.model,
        "--host", "127.0.0.1", "--port", str(args.port),
        "--n_ctx", "4096", "--n_batch", "512",
    ]
    # Threads: llama-cpp-python's defaults (generation on half the cores,
    # prompts on all). On the 2-core machine its OpenMP workers spin against
    # its other threads: 16 tokens took 50 s with 2 threads, 2.0 s with 1.
    # OMP_WAIT_POLICY=passive undid it (1.3 s for the 16 tokens), so the
    # server runs with it: the peer as fast as it can be made here.
    environment = dict(os.environ, OMP_WAIT_POLICY="passive")
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    url = f"http://127.0.0.1:{args.port}/v1/models"
    deadline = time.time() + 120
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("llama_cpp.server did not answer in 120 s")


def chat_adapter():
    # One request per call, as on the Rust side: no second try through the
    # JSON adapter when a reply does not parse (random weights never parse).
    try:
        return dspy.ChatAdapter(use_json_adapter_fallback=False)
    except TypeError:
        return dspy.ChatAdapter()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--base-url", default=None)
    args = parser.parse_args()

    server = None if args.base_url else start_server(args)
    base_url = args.base_url or f"http://127.0.0.1:{args.port}/v1"
    try:
        lm = dspy.LM(
            "openai/bench",
            api_base=base_url,
            api_key="local",
            temperature=0.0,
            max_tokens=args.max_tokens,
            cache=False,
            num_retries=0,
            # LiteLLM sends DSPy's max_tokens as `max_completion_tokens`,
            # which llama-cpp-python's server ignores: every call then ran
            # until the context was full (minutes per call). The old field
            # name in the request body makes the reply budget hold.
            extra_body={"max_tokens": args.max_tokens},
        )
        dspy.configure(lm=lm, adapter=chat_adapter())
        predict = dspy.Predict(QA)
        predict.demos = [dspy.Example(question=q, answer=a) for q, a in DEMOS]

        def call(i):
            try:
                predict(question=question(i))
                return True
            except Exception:  # a reply that does not parse
                return False

        call_ms = []
        for run in range(args.runs + 1):
            started = time.perf_counter()
            call(10_000 + run)
            if run > 0:  # the first call is a warm-up
                call_ms.append((time.perf_counter() - started) * 1e3)

        examples = [dspy.Example(question=question(i)).with_inputs("question") for i in range(args.examples)]
        started = time.perf_counter()
        results = predict.batch(
            examples,
            num_threads=args.concurrency,
            max_errors=args.examples + 1,
            return_failed_examples=True,
            disable_progress_bar=True,
        )
        elapsed = time.perf_counter() - started
        predictions = results[0] if isinstance(results, tuple) else results
        parsed = sum(1 for p in predictions if p is not None and getattr(p, "answer", None) is not None)
        print(f"python DSPy: {args.examples} examples in {elapsed:.1f} s", file=sys.stderr)
        print(json.dumps({
            "call_ms": statistics.median(call_ms),
            "examples": args.examples,
            "examples_per_s": args.examples / elapsed,
            "parsed": parsed,
            "versions": {"dspy": dspy.__version__, "llama_cpp_python": llama_cpp.__version__},
        }))
    finally:
        if server is not None:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
