"""Throughput, latency and memory of `tfflannel serve` on loopback, against `predict --model` in-process.

Starts `tfflannel serve` on a free 127.0.0.1 port (nothing else is contacted) and sends real films, one per
request (TF Serving's `{"instances": [{"b64": ...}]}`), cycling through the given films:

- for each concurrency level (default 1, 2, 4, 8 client threads): at most --requests requests in all, stopped
  at --time-cap seconds; prints films/s, p50/p95/p99 latency, errors and the server's resident memory
  before and after;
- hostile requests (a body over --max-body-mb, malformed JSON, an empty batch, a decompression bomb inside a
  batch, a truncated film, non-image bytes, bad base64, another signature): each must get its 4xx with an
  `{"error": ...}`, and the next good request the very answer it got before;
- a soak of --soak requests: the server's resident memory after it against before it (growth must stay < 5 %);
- the in-process baseline: the library call of `predict --model` (`serving.predict.predict_files` on the
  export's `predict_uint8`) on the same films, one per call, so the server's overhead is a ratio; its
  probabilities are compared with the served ones.

Exits 1 if a hostile request is not refused as expected, an answer changes, or memory grows 5 % or more.

    python tools/bench_serve.py --model export/tfflannel [--films tfflannel/sample/cls] [--levels 1,2,4,8]
        [--requests 200] [--time-cap 300] [--soak 1000] [--soak-concurrency 4]
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tfflannel.serving.serve_process import ServedModel, hostile_requests, instances_body  # noqa: E402


def run_load(server, bodies, concurrency, requests, time_cap):
    """`requests` predict calls from `concurrency` threads (stopped at `time_cap` s); latencies, errors, seconds."""
    latencies, errors, lock, taken = [], [], threading.Lock(), [0]
    deadline = time.perf_counter() + time_cap

    def client():
        while time.perf_counter() < deadline:
            with lock:
                if taken[0] >= requests:
                    return
                index = taken[0]
                taken[0] += 1
            try:
                status, answer, seconds = server.predict(bodies[index % len(bodies)])
            except OSError as error:
                status, answer, seconds = None, {"error": repr(error)}, None
            with lock:
                if status == 200:
                    latencies.append(seconds)
                else:
                    errors.append((status, answer.get("error")))

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.array(latencies), errors, time.perf_counter() - started


def resident_mb(pid):
    """Resident memory of a process, in MB (psutil comes with the serve extra)."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 1e6


def check_hostile(server, film, max_body_bytes, good, reference):
    """Each hostile request gets its status and word; the next good answer equals `reference`. Returns failures."""
    failures = []
    print("\n| hostile request | status | error (start) | next good answer unchanged |\n|---|---|---|---|")
    for name, body, expected, word in hostile_requests(film, max_body_bytes):
        status, answer = server.request("POST", f"/v1/models/{server.name}:predict", body)
        after = server.predict(good)[:2]
        unchanged = after == (200, reference)
        message = str(answer.get("error", answer))
        print(f"| {name} | {status} | {message[:70]} | {'yes' if unchanged else 'NO'} |")
        if status != expected or word.lower() not in message.lower() or not unchanged:
            failures.append(name)
    return failures


def run_baseline(model, films):
    """`predict --model`'s library call on each film alone (after one warm-up): films/s and the records."""
    from tfflannel.serving.predict import load_exported, predict_files

    predict_fn = load_exported(model)
    predict_files(predict_fn, films[:1], batch_size=1, progress=False)
    started = time.perf_counter()
    records, failures = predict_files(predict_fn, films, batch_size=1, progress=False)
    return len(records) / (time.perf_counter() - started), records, failures


def main():
    """Parse the options, run the loads, hostile requests, soak and baseline; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory (from `tfflannel export`)")
    parser.add_argument("--films", default=str(Path(__file__).resolve().parents[1] / "tfflannel" / "sample" / "cls"),
                        help="folder of PNG films (default: the bundled sample)")
    parser.add_argument("--levels", default="1,2,4,8", help="client concurrency levels")
    parser.add_argument("--requests", type=int, default=200, help="requests per level")
    parser.add_argument("--time-cap", type=float, default=300.0, help="seconds per level at most")
    parser.add_argument("--soak", type=int, default=1000, help="requests in the memory soak")
    parser.add_argument("--soak-concurrency", type=int, default=4)
    parser.add_argument("--soak-time-cap", type=float, default=1800.0)
    parser.add_argument("--max-body-mb", type=float, default=1.0, help="the server's body limit")
    parser.add_argument("--log", default=None, help="file for the server's log")
    args = parser.parse_args()
    films = sorted(Path(args.films).rglob("*.png"))
    bodies = [instances_body([film.read_bytes()]) for film in films]
    failures = []
    with ServedModel(args.model, options=["--max-body-mb", str(args.max_body_mb)], log=args.log) as server:
        served = {}
        for film, body in zip(films, bodies, strict=True):           # warm-up, and the reference answers
            status, answer, _ = server.predict(body)
            if status != 200:
                sys.exit(f"{film}: {status} {answer}")
            served[film] = answer
        print(f"{len(films)} films from {args.films}; server pid {server.pid} on 127.0.0.1:{server.port}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("\n| clients | requests | films/s | p50 s | p95 s | p99 s | errors | server RSS before -> after MB |")
        print("|---|---|---|---|---|---|---|---|")
        rates = {}
        for level in (int(v) for v in args.levels.split(",")):
            before = resident_mb(server.pid)
            latencies, errors, seconds = run_load(server, bodies, level, args.requests, args.time_cap)
            rates[level] = len(latencies) / seconds
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if len(latencies) else (np.nan,) * 3
            print(f"| {level} | {len(latencies) + len(errors)} | {rates[level]:.2f} | {p50:.3f} | {p95:.3f} | "
                  f"{p99:.3f} | {len(errors)} | {before:.0f} -> {resident_mb(server.pid):.0f} |")
            failures += [f"load {level}: {error}" for error in errors[:3]]
        good = bodies[0]
        failures += check_hostile(server, films[0].read_bytes(), int(args.max_body_mb * 1e6), good, served[films[0]])
        before = resident_mb(server.pid)
        latencies, errors, seconds = run_load(server, bodies, args.soak_concurrency, args.soak, args.soak_time_cap)
        after = resident_mb(server.pid)
        growth = (after - before) / before
        print(f"\nsoak: {len(latencies)} answered, {len(errors)} errors in {seconds:.0f} s "
              f"({args.soak_concurrency} clients); server RSS {before:.0f} -> {after:.0f} MB ({100 * growth:+.1f} %)")
        if growth >= 0.05 or errors or len(latencies) < args.soak:
            failures.append(f"soak: growth {100 * growth:+.1f} %, {len(errors)} errors, {len(latencies)} answered")
    rate, records, unread = run_baseline(args.model, films)
    differences = [np.abs(np.subtract(served[Path(r["file"])]["predictions"][0]["probabilities"],
                                      list(r["probabilities"].values()))).max() for r in records]
    print(f"\nin-process predict --model (predict_uint8, one film per call): {rate:.2f} films/s; server at 1 client "
          f"{rates.get(1, float('nan')):.2f} films/s; overhead ratio (in-process / served) "
          f"{rate / rates.get(1, float('nan')):.2f}; largest probability difference {max(differences):.1e}")
    if unread or max(differences) > 1e-5:
        failures.append(f"baseline: {len(unread)} unread, largest difference {max(differences):.1e}")
    if failures:
        sys.exit("FAILED: " + "; ".join(map(str, failures)))


if __name__ == "__main__":
    main()
