"""Load test of ``cbert serve`` on loopback: N concurrent clients for T seconds, each posting one
generated clinical note at a time to ``/v1/embeddings`` (base64, as the openai client asks),
against the server with batching across requests on and off (``--no-batching``: one request
per forward), and, when installed, sentence-transformers' ``encode`` called from N threads
in this process (no HTTP, so it is favoured). Reports requests/s, tokens/s, p50 and p99
latency, the batched/unbatched ratio, and the largest difference between any answer and
offline ``model.embed`` of the same note. It also reports the CPU the server and this load
generator took (Linux ``/proc``): on a shared machine the server's share of the cores drifts
between slices, while its CPU per request, and so the ratio of those, does not. One BLAS thread
by default (``--threads``): with 2 on a busy 2-core machine a one-request forward took 14x the
CPU it takes with one (README, Serving), which flatters batching without serving more.

``--engine-only`` measures the model's own ceiling instead, with no HTTP and no clients: the
server's engine in this process, given ``--clients`` notes at once per round, with one request
per forward and with batching at each ``--forward-costs`` (a forward's fixed cost in padded
tokens; "budget" packs by the token budget alone). No batcher beats the ratio it reports: where a
forward's cost grows with its padded tokens (a CPU), batching gains only the fixed cost.

    python benchmarks/bench_serve.py [--model DIR] [--backend numpy] [--clients 32] [--seconds 20]
    python benchmarks/bench_serve.py --engine-only [--rounds 4] [--forward-costs 0,32,64,128,budget]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
REPO = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder (default: the offline all-MiniLM-L6-v2)")
    ap.add_argument("--backend", default="numpy", choices=["numpy", "mlx", "wgpu"])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured load per system")
    ap.add_argument("--rounds", type=int, default=4, help="alternating slices the seconds are cut into")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured load first (compiles, caches)")
    ap.add_argument("--threads", type=int, default=1, help=(
        "BLAS / torch threads of the server (cbert serve --threads) and of sentence-transformers (default 1: on the "
        "2-core shared machine of the README's figures, 2 threads made each request cost several times the CPU)"))
    ap.add_argument("--notes", type=int, default=1000, help="distinct generated notes the clients cycle through")
    ap.add_argument("--max-sentences", type=int, default=6, help="a note has 1 to this many sentences")
    ap.add_argument("--systems", default="batched,unbatched,sentence-transformers")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--engine-only", action="store_true", help="the model's ceiling: the engine in-process, no HTTP")
    ap.add_argument("--forward-costs", default="0,32,64,128,budget", help="--engine-only: forward costs to compare")
    return ap.parse_args()


ARGS = _args()
for var in THREADS_ENV:  # read by the BLAS libraries when they load: before numpy
    os.environ[var] = str(ARGS.threads)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO))
import cbert  # noqa: E402
from cbert.checkpoint.sentence_transformers import embedding_defaults  # noqa: E402
from cbert.cli.common import default_model_path  # noqa: E402

SENTENCES = [
    "Patient denies chest pain or shortness of breath.", "Afebrile, vitals stable on room air.",
    "Started on furosemide 40 mg IV BID for volume overload.", "History of COPD, on home oxygen 2 L.",
    "Troponin negative times two.", "Plan to discharge home tomorrow with follow-up in clinic.",
    "Creatinine up to 1.8 from a baseline of 1.1; holding lisinopril.", "No fever, chills, nausea or vomiting.",
    "Echo shows an ejection fraction of 35% with mild mitral regurgitation.",
    "Pt reports intermittent epigastric pain after meals.", "Lungs with bibasilar crackles, 2+ pitting edema.",
    "Blood cultures pending; continue vancomycin and cefepime.", "Admitted for CHF exacerbation.",
    "Metformin held while NPO.", "A1c 8.2, insulin glargine increased to 20 units nightly.",
    "CT head without acute intracranial abnormality.", "Social work consulted for placement.",
    "Tolerating a regular diet; ambulating with a walker.", "Potassium repleted.",
    "Family meeting held; goals of care discussed and the patient remains full code.",
]


def notes(n: int, max_sentences: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(SENTENCES, int(rng.integers(1, max_sentences + 1)))) for _ in range(n)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def load(call, n_clients: int, seconds: float, n_texts: int) -> dict:
    """``n_clients`` threads call ``call(client, text_index)`` back to back until ``seconds`` pass."""
    latencies: list[list[float]] = [[] for _ in range(n_clients)]
    errors: list[str] = []
    done_texts: list[list[int]] = [[] for _ in range(n_clients)]
    start = time.perf_counter()
    deadline = start + seconds

    def client(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            idx = (i * 7919) % n_texts  # clients spread over the notes
            t0 = time.perf_counter()
            try:
                call(k, idx)
            except Exception as e:  # counted, and the load goes on
                errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.1)
                continue
            latencies[k].append(time.perf_counter() - t0)
            done_texts[k].append(idx)
            i += n_clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 300)
    return {"seconds": time.perf_counter() - start, "latencies": [x for lat in latencies for x in lat],
            "errors": errors, "texts": [i for d in done_texts for i in d]}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CbertServer:
    """``cbert serve`` in a subprocess on a free loopback port, one keep-alive connection per client."""

    def __init__(self, model: str, texts: list[str], batching: bool):
        cmd = [sys.executable, "-m", "cbert.cli", "serve", "--model", model, "--backend", ARGS.backend, "--port", "0",
               "--threads", str(ARGS.threads), "--max-queue", str(max(512, 2 * ARGS.clients)),
               *([] if batching else ["--no-batching"])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "CBERT_API_KEY": ""})
        before = []  # warnings may come first (wgpu on a software adapter says so)
        for line in self.proc.stderr:
            if " on http://" in line:
                break
            before.append(line)
        else:  # it exited
            raise RuntimeError(f"cbert serve did not start: {''.join(before)}")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep its pipe drained
        self.host, port = line.split(" on http://")[1].split()[0].rsplit(":", 1)
        self.port = int(port)
        deadline = time.monotonic() + 300
        while not self._healthy():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("cbert serve did not become healthy")
            time.sleep(0.1)
        self.conns = [self._connect() for _ in range(ARGS.clients)]
        self.bodies = [json.dumps({"input": t, "model": "bench", "encoding_format": "base64"}).encode() for t in texts]
        self.seen: dict[int, np.ndarray] = {}

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=300)

    def _healthy(self) -> bool:
        try:
            conn = self._connect()
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def call(self, k: int, idx: int) -> None:
        for attempt in (0, 1):  # a keep-alive connection the server closed while idle is opened again, once
            try:
                self.conns[k].request("POST", "/v1/embeddings", self.bodies[idx], {"Content-Type": "application/json"})
                r = self.conns[k].getresponse()
                data = r.read()
                break
            except (OSError, http.client.HTTPException):
                self.conns[k].close()
                self.conns[k] = self._connect()
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        if idx not in self.seen:  # decode each note's first answer, to compare with model.embed
            self.seen[idx] = np.frombuffer(base64.b64decode(json.loads(data)["data"][0]["embedding"]), "<f4")

    def metrics(self) -> dict[str, float]:
        conn = self._connect()
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        values = {k: float(v) for k, v in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")}
        return {**values, "server_cpu_seconds": _cpu_seconds(self.proc.pid)}

    def stop(self) -> None:
        for c in self.conns:
            c.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class SentenceTransformersThreads:
    """sentence-transformers' encode, one note per call, from the client threads themselves."""

    def __init__(self, model: str, texts: list[str]):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(ARGS.threads)
        self.st = SentenceTransformer(model, device="cpu")
        self.texts = texts
        self.seen: dict[int, np.ndarray] = {}

    def call(self, k: int, idx: int) -> None:
        self.seen.setdefault(idx, self.st.encode([self.texts[idx]], convert_to_numpy=True)[0])

    def metrics(self) -> dict[str, float]:
        return {}

    def stop(self) -> None:
        pass


def engine_only(model: str, texts: list[str]) -> dict:
    """Seconds for the server's engine to answer ``--clients`` requests queued at once, per setting."""
    from cbert.serve.engine import Engine
    from cbert.serve.metrics import Metrics
    from cbert.serve.pipeline import Pipeline

    m = cbert.load(model, backend=ARGS.backend)
    pipeline = Pipeline(m, "mean", False)
    settings = {"one request per forward": dict(batch_across_requests=False)}
    for cost in ARGS.forward_costs.split(","):
        settings[f"batched, forward cost {cost}"] = dict(forward_tokens=10**9 if cost == "budget" else int(cost))
    engines = {name: Engine(m, "mean", 16384, 10**6, Metrics(), **kw) for name, kw in settings.items()}
    for e in engines.values():
        e.start()
    rng = np.random.default_rng(0)
    seconds = dict.fromkeys(engines, 0.0)
    cpu = dict.fromkeys(engines, 0.0)  # this process's CPU seconds: what a shared machine's load does not skew
    try:
        for r in range(ARGS.rounds + 1):  # round 0 warms every shape up, unmeasured
            jobs = [pipeline.prepare([texts[i]], "input", False) for i in rng.choice(len(texts), ARGS.clients)]
            for name, engine in engines.items():  # alternating: a shared machine's drifting load weighs on each
                answered = threading.Semaphore(0)
                start, cpu_start = time.perf_counter(), time.process_time()
                for job in jobs:
                    engine.submit(job.windows, "pooled", 1, lambda result, a=answered: a.release())
                for _ in jobs:
                    answered.acquire()
                seconds[name] += (time.perf_counter() - start) if r else 0.0
                cpu[name] += (time.process_time() - cpu_start) if r else 0.0
    finally:
        for e in engines.values():
            e.stop()
    base, base_cpu, n = seconds["one request per forward"], cpu["one request per forward"], ARGS.rounds * ARGS.clients
    for name, t in seconds.items():
        print(f"{name:>32}: {n / t:7.1f} requests/s  {base / t:5.2f}x one request per forward;  CPU "
              f"{1000 * cpu[name] / n:6.1f} ms a request, {base_cpu / cpu[name]:5.2f}x less", flush=True)
    return {name: {"seconds": t, "over_one_per_forward": base / t, "cpu_seconds": cpu[name],
                   "cpu_over_one_per_forward": base_cpu / cpu[name]} for name, t in seconds.items()}


def main() -> int:
    model = ARGS.model or default_model_path()
    texts = notes(ARGS.notes, ARGS.max_sentences)
    if ARGS.engine_only:
        print(f"the engine in-process, no HTTP: {ARGS.clients} requests queued at once, {ARGS.rounds} rounds, "
              f"backend {ARGS.backend}, {ARGS.threads} threads, notes of 1-{ARGS.max_sentences} sentences, load "
              f"average {os.getloadavg()[0]:.1f}", flush=True)
        results = engine_only(model, texts)
        if ARGS.json:
            Path(ARGS.json).write_text(json.dumps({"args": vars(ARGS), "engine_only": results}, indent=2))
        return 0
    pooling, normalize = embedding_defaults(model)
    reference = cbert.load(model, backend="numpy")
    n_tokens = np.array([len(e.ids) for e in reference.tokenizer.encode(texts, check_length=False)])
    print(f"{reference!r}; {ARGS.clients} clients x {ARGS.seconds:g} s per system in {ARGS.rounds} alternating "
          f"slices, {ARGS.threads} threads, {len(texts)} notes of {n_tokens.min()}-{n_tokens.max()} tokens "
          f"(mean {n_tokens.mean():.0f}), backend {ARGS.backend}, load average {os.getloadavg()[0]:.1f}", flush=True)
    makers = {"batched": lambda: CbertServer(model, texts, batching=True),
              "unbatched": lambda: CbertServer(model, texts, batching=False),
              "sentence-transformers": lambda: SentenceTransformersThreads(model, texts)}
    systems = {}
    for name in ARGS.systems.split(","):
        try:
            systems[name] = makers[name]()
        except ImportError as e:
            print(f"{name}: not installed ({e}), skipped", flush=True)
    runs: dict[str, list[tuple[dict, dict, dict]]] = {name: [] for name in systems}
    try:
        for system in systems.values():
            load(system.call, ARGS.clients, ARGS.warmup, len(texts))
        # Alternating slices: a machine whose load drifts (a shared one) weighs on every system alike.
        for _ in range(ARGS.rounds):
            for name, system in systems.items():
                before = {**system.metrics(), "this_cpu_seconds": time.process_time()}
                run = load(system.call, ARGS.clients, ARGS.seconds / ARGS.rounds, len(texts))
                runs[name].append((before, run, {**system.metrics(), "this_cpu_seconds": time.process_time()}))
    finally:
        for system in systems.values():
            system.stop()

    results: dict[str, dict] = {}
    for name, system in systems.items():
        seconds = sum(r["seconds"] for _, r, _ in runs[name])
        latencies = [x for _, r, _ in runs[name] for x in r["latencies"]]
        errors = [e for _, r, _ in runs[name] for e in r["errors"]]
        done = [i for _, r, _ in runs[name] for i in r["texts"]]
        idx = sorted(system.seen)
        want = reference.embed([texts[i] for i in idx], pooling=pooling or "mean", normalize=normalize)
        result = {"requests_per_s": len(latencies) / seconds, "tokens_per_s": float(n_tokens[done].sum() / seconds),
                  "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
                  "requests": len(latencies), "seconds": seconds, "errors": len(errors),
                  "max_abs_diff_vs_model_embed": float(np.abs(np.stack([system.seen[i] for i in idx]) - want).max())}
        line = (f"{name:>22}: {result['requests_per_s']:8.1f} req/s {result['tokens_per_s']:9.0f} tokens/s  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {len(errors)}"
                + (f" (first: {errors[0]})" if errors else "")
                + f"  max |answer - model.embed| {result['max_abs_diff_vs_model_embed']:.1e}")

        def delta(key: str, slices=runs[name]) -> float:
            return sum(after[key] - before[key] for before, _, after in slices)

        # CPU in cores (CPU seconds per second): what each side takes of the machine the load shares.
        result["this_process_cpu"] = delta("this_cpu_seconds") / seconds
        if "server_cpu_seconds" in runs[name][0][0]:  # the server's own metrics: forwards, their size, how busy
            forwards = delta("cbert_forward_duration_seconds_count")
            result.update(forwards=int(forwards), padded_tokens_per_forward=delta("cbert_batch_tokens_sum") / forwards,
                          model_busy=delta("cbert_forward_duration_seconds_sum") / seconds,
                          server_cpu=delta("server_cpu_seconds") / seconds,
                          server_cpu_ms_per_request=1000 * delta("server_cpu_seconds") / max(1, len(latencies)))
            line += (f"  {result['forwards']} forwards of {result['padded_tokens_per_forward']:.0f} padded tokens, "
                     f"model busy {100 * result['model_busy']:.0f}%, CPU: server {result['server_cpu']:.2f} cores "
                     f"({result['server_cpu_ms_per_request']:.1f} ms a request), load generator "
                     f"{result['this_process_cpu']:.2f}")
        else:
            line += f"  CPU {result['this_process_cpu']:.2f} cores"
        results[name] = result
        print(line, flush=True)
    if "batched" in results and "unbatched" in results:
        ratio = results["batched"]["requests_per_s"] / results["unbatched"]["requests_per_s"]
        print(f"batching across requests: {ratio:.2f}x the throughput of one request per forward "
              f"(load average now {os.getloadavg()[0]:.1f})")
        results["batched_over_unbatched"] = ratio
        # On a shared machine the server's share of the cores drifts; its CPU per request does not.
        cpu_ratio = results["unbatched"]["server_cpu_ms_per_request"] / results["batched"]["server_cpu_ms_per_request"]
        print(f"server CPU per request: batched {cpu_ratio:.2f}x less than one request per forward")
        results["unbatched_over_batched_cpu_per_request"] = cpu_ratio
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps({"args": vars(ARGS), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
