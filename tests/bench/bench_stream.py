#!/usr/bin/env python3
"""`make bench-stream`: live streaming against the real local cluster.

1. Synthesises meeting speech with espeak-ng (a long meeting for the single-stream run,
   a shorter one for the concurrency sweep).
2. `kiroku transcribe --format json` on each gives the batch WER and the reference
   timeline: the end of every word in the audio (Whisper with the whole file's context).
3. `kiroku up` (release binary, its own cluster root and ports) and `kiroku stream`
   clients paced at real time. Per-word final latency = when the final holding the
   word arrived at the client - when the word ended in the audio (reference timeline,
   matched by text). First-interim latency is measured from the first frame.
4. Concurrency sweep: N clients at once, N = 1, 2, ... until p95 passes 2 s; the
   largest N with p95 <= 2 s is what this machine holds.
5. Plumbing: the cluster again with workers on the BENCHMARK-ONLY null engine (no
   inference), `kiroku bench-plumbing` with 10, 100 and 1000 concurrent streams: the
   per-frame latency the plumbing adds (frame sent -> its echo back at the client).
6. Japanese: the Japanese meeting clip of `make bench` (Open JTalk, joined as the Rust
   tests join it), one stream with `--language ja` on a cluster whose worker runs the
   multilingual base model; streaming and batch CER (tests/src/cer.rs normalization).
   Japanese has no spaces, so streamed words cannot be matched to the batch timeline
   by text as in 3: latency is per final, when the final arrived at the client - the
   end of its own segment (end_ms, audio time from the stream start). Needs
   `make japanese-voice` (or KIROKU_TEST_HTS_VOICE) and `kiroku model fetch --model base`.

Usage: bench_stream.py KIROKU_BIN WORK_DIR [PART...]
PART: english (1-3, single stream), sweep (4), plumbing (5), japanese (6); default all.
"""
import difflib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from bench import JAPANESE_SENTENCES, cer, japanese_meeting_clip, japanese_voice

SENTENCES_FILE = os.path.join(os.path.dirname(__file__), "..", "support", "meeting_sentences.txt")
with open(SENTENCES_FILE, encoding="utf-8") as f:
    SENTENCES = [line.strip() for line in f if line.strip()]

GRPC = "127.0.0.1:50171"
ADMIN = "127.0.0.1:9581"


def normalize(text):
    return [w for w in re.split(r"[^\w']+", text.lower()) if w]


def wer(reference, hypothesis):
    r, h = normalize(reference), normalize(hypothesis)
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(len(r), 1)


def synthesize(work, name, text):
    raw, out = os.path.join(work, name + ".raw.wav"), os.path.join(work, name + ".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "155", "-w", raw, text], check=True)
    subprocess.run(["sox", raw, "-b", "16", "-r", "16000", "-c", "1", out, "pad", "0.5", "0.5"], check=True)
    return out


def batch(kiroku, wav, *extra):
    out = subprocess.run([kiroku, "transcribe", wav, "--format", "json", *extra], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def reference_words(transcript):
    return [(w["text"], w["end_ms"]) for s in transcript["segments"] for w in s["words"]]


def word_latencies(report, ref_words):
    """Latency (ms) of every streamed word matched by text to the batch timeline."""
    streamed = [(w["text"], f["arrival_ms"]) for f in report["finals"] for w in f["segment"]["words"]]
    a = [normalize(t)[0] if normalize(t) else "" for t, _ in ref_words]
    b = [normalize(t)[0] if normalize(t) else "" for t, _ in streamed]
    out = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out.append(streamed[block.b + k][1] - ref_words[block.a + k][1])
    return out


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[round((len(values) - 1) * q)]


def start_cluster(kiroku, work, name, extra, env=None):
    run_dir = os.path.join(work, "run-" + name)
    log = open(os.path.join(work, f"up-{name}.log"), "w")
    proc = subprocess.Popen([kiroku, "up", "--cluster", f"bench{name}{os.getpid()}", "--listen", GRPC,
                             "--admin-listen", ADMIN, "--run-dir", run_dir] + extra,
                            stdout=log, stderr=subprocess.STDOUT,
                            # Quotas and rate limits off the path: this measures streaming.
                            env={**os.environ, "KIROKU_STREAMS_PER_TENANT": "100000",
                                 "KIROKU_TENANT_RATE": "10000", "KIROKU_CALLER_RATE": "10000",
                                 **(env or {})})
    for _ in range(300):
        time.sleep(0.2)
        with open(log.name) as f:
            if "kiroku up: kiroku gateway" in f.read():
                return proc
        if proc.poll() is not None:
            break
    with open(log.name) as f:
        sys.exit("kiroku up did not start:\n" + f.read())


def stop_cluster(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def stream_clients(kiroku, work, wav, n, tag, extra=()):
    """n `kiroku stream` clients at once; their reports, each with the client's JSON
    transcript (stdout) added as "transcript"."""
    procs = []
    for i in range(n):
        report = os.path.join(work, f"{tag}-{i}.json")
        p = subprocess.Popen([kiroku, "stream", wav, "--gateway", "http://" + GRPC, "--format", "json",
                              "--report", report, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((p, report))
    reports = []
    for p, report in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            sys.exit(f"kiroku stream failed: {err.decode()}")
        try:
            transcript = json.loads(out)
        except ValueError:
            transcript = {}
        with open(report) as f:
            reports.append({**json.load(f), "transcript": transcript})
    return reports


def english_single(kiroku, work):
    long_text = " ".join(SENTENCES)
    long_wav = synthesize(work, "meeting-long", long_text)
    long_batch = batch(kiroku, long_wav)
    cluster = start_cluster(kiroku, work, "whisper", ["--workers", "1"])
    try:
        [report] = stream_clients(kiroku, work, long_wav, 1, "single")
        lat = word_latencies(report, reference_words(long_batch))
        stream_text = " ".join(f["segment"]["text"] for f in report["finals"])
        single = {
            "audio_s": long_batch["duration_ms"] / 1000,
            "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
            "first_interim": report["first_interim_ms"],
            "stream_wer": wer(long_text, stream_text),
            "batch_wer": wer(long_text, long_batch["text"]),
        }
    finally:
        stop_cluster(cluster)
    return single


def concurrency_sweep(kiroku, work):
    short_text = " ".join(SENTENCES[:5])
    short_wav = synthesize(work, "meeting-short", short_text)
    short_batch = batch(kiroku, short_wav)
    # Concurrency: N clients at once, for the default step (250 ms) and 500 ms; N = 1..4
    # always, then on while p95 stays within 2 s.
    sweep = []
    for step in (250, 500):
        cluster = start_cluster(kiroku, work, f"sweep{step}", ["--workers", "1", "--sessions", "16"],
                                {"KIROKU_WORKER_STEP_MS": str(step)})
        try:
            n = 1
            while n <= 8:
                reports = stream_clients(kiroku, work, short_wav, n, f"sweep{step}-{n}")
                lat = []
                for r in reports:
                    lat += word_latencies(r, reference_words(short_batch))
                wers = [wer(short_text, " ".join(f["segment"]["text"] for f in r["finals"])) for r in reports]
                sweep.append((step, n, pct(lat, 0.5), pct(lat, 0.95), max(wers)))
                print(f"  step {step} ms, {n} concurrent streams: p50 {pct(lat, 0.5):.0f} ms "
                      f"p95 {pct(lat, 0.95):.0f} ms worst WER {max(wers):.3f}", file=sys.stderr)
                if n >= 4 and pct(lat, 0.95) > 2000:
                    break
                n += 1
        finally:
            stop_cluster(cluster)
    return sweep


def plumbing_latency(kiroku, work):
    plumbing = []
    cluster = start_cluster(kiroku, work, "plumbing", ["--engine", "null-benchmark", "--sessions", "5000"])
    try:
        for streams in (10, 100, 1000):
            out = subprocess.run([kiroku, "bench-plumbing", "--gateway", "http://" + GRPC, "--streams",
                                  str(streams), "--seconds", "10"], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(out.stderr)
            plumbing.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print("  " + out.stderr.strip().splitlines()[0], file=sys.stderr)
    finally:
        stop_cluster(cluster)
    return plumbing


def japanese_single(kiroku, work, voice):
    """One Japanese stream on a base worker: streaming and batch CER, per-final latency."""
    wav, reference = japanese_meeting_clip(work, voice, JAPANESE_SENTENCES)
    batch_json = batch(kiroku, wav, "--model", "base", "--language", "ja")
    cluster = start_cluster(kiroku, work, "japanese", ["--workers", "1", "--model", "base"])
    try:
        [report] = stream_clients(kiroku, work, wav, 1, "japanese", ["--language", "ja"])
    finally:
        stop_cluster(cluster)
    finals = report["finals"]
    latencies = [f["arrival_ms"] - f["segment"]["end_ms"] / report["speed"] for f in finals]
    for f, latency in zip(finals, latencies):
        s = f["segment"]
        print(f"  ja final {s['start_ms']}-{s['end_ms']} ms arrived {f['arrival_ms']:.0f} ms "
              f"(+{latency:.0f} ms): {s['text']}", file=sys.stderr)
    stream_text = "".join(f["segment"]["text"] for f in finals)
    print(f"  ja reference: {reference}\n  ja batch:     {batch_json['text']}\n  ja stream:    {stream_text}",
          file=sys.stderr)
    return {
        "audio_s": batch_json["duration_ms"] / 1000,
        "finals": len(finals),
        "reconnects": report["reconnects"],
        "p50": pct(latencies, 0.5), "p95": pct(latencies, 0.95),
        "first_interim": report["first_interim_ms"],
        "stream_language": report["transcript"].get("language"),
        "stream_cer": cer(reference, stream_text),
        "batch_cer": cer(reference, batch_json["text"]),
    }


def seconds(ms):
    return "-" if ms is None else f"{ms / 1000:.2f} s"


def main():
    kiroku, work = sys.argv[1], sys.argv[2]
    parts = sys.argv[3:] or ["english", "sweep", "plumbing", "japanese"]
    unknown = set(parts) - {"english", "sweep", "plumbing", "japanese"}
    if unknown:
        sys.exit(f"unknown parts {sorted(unknown)}: use english, sweep, plumbing, japanese")
    os.makedirs(work, exist_ok=True)
    voice = japanese_voice(work) if "japanese" in parts else None  # checked before any part runs
    single = english_single(kiroku, work) if "english" in parts else None
    sweep = concurrency_sweep(kiroku, work) if "sweep" in parts else []
    plumbing = plumbing_latency(kiroku, work) if "plumbing" in parts else []
    japanese = japanese_single(kiroku, work, voice) if "japanese" in parts else None

    held = max([n for _, n, _, p95, _ in sweep if p95 <= 2000], default=0)
    if single:
        print()
        print(f"Streaming benchmark: tiny.en, release build, 2-core machine, audio paced at real time")
        print(f"single stream, {single['audio_s']:.0f} s meeting:")
        print(f"| metric | measured | goal |")
        print(f"|---|---|---|")
        print(f"| final latency p50 (word end -> final at client) | {single['p50'] / 1000:.2f} s | <= 1.0 s |")
        print(f"| final latency p95 | {single['p95'] / 1000:.2f} s | <= 2.0 s |")
        print(f"| first interim after stream start | {single['first_interim'] / 1000:.2f} s | |")
        print(f"| streaming WER | {single['stream_wer']:.3f} | <= batch + 0.02 |")
        print(f"| batch WER (`kiroku transcribe`, same audio) | {single['batch_wer']:.3f} | |")
        if sweep:
            print(f"| concurrent real-time streams with p95 <= 2 s (any step) | {held} | >= 4 |")
    if sweep:
        print()
        print("concurrency sweep (short meeting, every stream at real time):")
        print("| worker step | streams | p50 | p95 | worst WER |")
        print("|---|---|---|---|---|")
        for step, n, p50, p95, worst in sweep:
            print(f"| {step} ms | {n} | {p50 / 1000:.2f} s | {p95 / 1000:.2f} s | {worst:.3f} |")
    if plumbing:
        print()
        print("plumbing (BENCHMARK-ONLY null engine, no inference; frame sent -> echo at client):")
        print("| streams | frames answered | p50 | p99 | max | goal p99 |")
        print("|---|---|---|---|---|---|")
        for p in plumbing:
            print(f"| {p['streams']} | {p['frames_answered']}/{p['frames_expected']} | {p['p50_ms']:.1f} ms | "
                  f"{p['p99_ms']:.1f} ms | {p['max_ms']:.1f} ms | <= 5 ms |")
    if japanese:
        j = japanese
        print()
        print("Japanese streaming: base (multilingual), --language ja, release build, 2-core machine, "
              "audio paced at real time")
        print(f"single stream, {j['audio_s']:.1f} s Open JTalk meeting ({len(JAPANESE_SENTENCES)} sentences), "
              f"{j['finals']} finals, {j['reconnects']} reconnects:")
        print("| metric | measured |")
        print("|---|---|")
        print(f"| final latency p50 (end of the final's segment -> final at client) | {seconds(j['p50'])} |")
        print(f"| final latency p95 | {seconds(j['p95'])} |")
        print(f"| first interim after stream start | {seconds(j['first_interim'])} |")
        print(f"| language of the streamed transcript | {j['stream_language'] or '-'} |")
        print(f"| streaming CER | {j['stream_cer']:.3f} |")
        print(f"| batch CER (`kiroku transcribe --model base --language ja`, same audio) | {j['batch_cer']:.3f} |")


if __name__ == "__main__":
    main()
