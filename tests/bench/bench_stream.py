#!/usr/bin/env python3
"""`make bench-stream`: live streaming against the real local cluster.

`kiroku up` (release binary, its own cluster root and ports) and `kiroku stream` clients
paced at real time.

- english, long, japanese: one stream of a meeting (the 42 s espeak-ng meeting; a
  3.5-minute meeting of three espeak-ng voices, tests/support/long_meeting.txt; the
  Open JTalk clip of `make bench`, streamed with `--language ja` to a base worker). Each
  reports the minutes (the utterance finals) against `kiroku transcribe` of the same
  audio (WER, or CER with tests/src/cer.rs normalization for Japanese), caption latency
  (word end -> first shown at the client: its caption, or its final when no caption held
  it; English word ends from the batch timeline matched by text, Japanese from the
  stream's own word times), final latency (the final's last word end -> final at the
  client), and the worker's CPU (% of all cores) over the stream. The "before" column
  is docs/performance.md's run of the previous release (captions were the minutes then).
- english-base: the 42 s meeting again on a worker with tiny.en captions and base
  finals (`--final-model base`).
- sweep: N clients at once on one worker, N = 1, 2, ... until p95 passes 2 s, for the
  250 ms and 500 ms steps: per-word caption latency (first shown, by a caption or its
  final) against the batch timeline (SWEEP_STEPS=250 sweeps one step). SWEEP_REPEATS=3 runs each point three times and
  reports the medians and the p95 range (a capacity claim needs it: p95 moves run to run).
  SWEEP_STAGGER_MS=700 starts the clients 0.7 s apart (by default they start together,
  the same audio in step: every stream's utterance ends at the same moment).
  The sweep turns the worker's admission by lag off (KIROKU_WORKER_ADMIT_MAX_LAG_S=0):
  every stream is decoded at once, which is what it measures.
- overload: 8 clients of the 42 s meeting at once on one worker with the default
  admission (--sessions 8: the worker's lag check decides): how many were served at
  once, queued then served, or refused (RESOURCE_EXHAUSTED after the gateway's queue
  timeout), the served streams' final latency and WER.
- plumbing: workers on the BENCHMARK-ONLY null engine (no inference), `kiroku
  bench-plumbing` with 10, 100 and 1000 concurrent streams: the per-frame latency the
  plumbing adds (frame sent -> its echo back at the client), every frame, the steady
  state and each stream's first frame (session start). With KIROKU_BENCH_NATS_SERVER
  (`make bench-stream` sets it) on a NATS server of its own, then again at 100 streams
  with `sync_interval: always`; else on the machine's NATS.

Usage: bench_stream.py KIROKU_BIN WORK_DIR [PART...]
PART: english, english-base, long, sweep, sweep-ja, overload, plumbing, japanese; default all.
sweep-ja is the sweep with base workers and the Japanese clip (CER). Japanese needs
`make japanese-voice` (or KIROKU_TEST_HTS_VOICE) and `kiroku model fetch --model base`.
"""
import difflib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

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


def synthesize(work, name, text, voice="en-us", lead=0.5, trail=0.5):
    raw, out = os.path.join(work, name + ".raw.wav"), os.path.join(work, name + ".wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", raw, text], check=True)
    subprocess.run(["sox", raw, "-b", "16", "-r", "16000", "-c", "1", out, "pad", str(lead), str(trail)],
                   check=True)
    return out


LONG_MEETING_FILE = os.path.join(os.path.dirname(__file__), "..", "support", "long_meeting.txt")
LONG_MEETING_VOICES = {"A": "en-us", "B": "en-gb+m3", "C": "en-us+f3"}


def long_meeting(work):
    """tests/src/speech.rs `english_long_meeting`: three voices, turn after turn, 0.3 s
    between one speaker's turns, 0.5-0.9 s between speakers."""
    with open(LONG_MEETING_FILE, encoding="utf-8") as f:
        turns = [line.strip().split("|", 1) for line in f if "|" in line]
    parts = []
    for i, (speaker, text) in enumerate(turns):
        same = i + 1 < len(turns) and turns[i + 1][0] == speaker
        pause = 0.3 if same else 0.5 + 0.1 * (i % 5)
        parts.append(synthesize(work, f"long-{i}", text, LONG_MEETING_VOICES.get(speaker, "en-us+f3"),
                                0.5 if i == 0 else 0.0, pause))
    wav = os.path.join(work, "meeting-3voices.wav")
    subprocess.run(["sox", *parts, wav], check=True)
    return wav, " ".join(text for _, text in turns)


def worker_cpu_seconds(cluster):
    """CPU seconds (user + system) so far of the `kiroku serve worker` processes that
    `kiroku up` (`cluster`) started."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                # Fields after "(comm)": state, ppid, ..., utime (12th), stime (13th).
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"serve" in cmd and b"worker" in cmd and int(stat[1]) == cluster.pid:
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def first_shown(report):
    """Every word as a live viewer first read it, in order: (text, arrival ms, end ms in
    stream time, "caption" or "final") from its caption, or from its final when no
    caption held it (a final replaces its captions, but the words shown before it were
    already read)."""
    pieces = sorted([(c["arrival_ms"], c["segment"], "caption") for c in report.get("captions", [])] +
                    [(f["arrival_ms"], f["segment"], "final") for f in report["finals"]],
                    key=lambda p: p[0])
    shown, until = [], -1
    for arrival, segment, source in pieces:
        for w in segment["words"]:
            if w["end_ms"] > until:
                until = w["end_ms"]
                shown.append((w["text"], arrival, w["end_ms"] / report["speed"], source))
    return shown


def shown_latencies(report, ref_words=None, source=None, after_ms=0):
    """Caption latency per word (ms): when it was first shown at the client (its caption,
    or its final when no caption held it) - when it ended. With `ref_words` the end is
    the batch timeline's (matched by text); else the stream's own word times. With
    `source` ("caption" or "final") only the words first shown that way; with
    `after_ms` only the words ending after it (spoken once a worker took the stream)."""
    shown = first_shown(report)
    keep = lambda word: source is None or word[3] == source
    if ref_words is None:
        return [arrival - end for _, arrival, end, _ in filter(keep, shown) if end >= after_ms]
    a = [normalize(t)[0] if normalize(t) else "" for t, _ in ref_words]
    b = [normalize(t)[0] if normalize(t) else "" for t, *_ in shown]
    out = []
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            if keep(shown[block.b + k]) and ref_words[block.a + k][1] >= after_ms:
                out.append(shown[block.b + k][1] - ref_words[block.a + k][1])
    return out


def final_latencies(report):
    """Per final (ms): its arrival at the client - the end of its last word."""
    return [f["arrival_ms"] - f["segment"]["end_ms"] / report["speed"] for f in report["finals"]]


def minutes_run(kiroku, work, name, wav, text, cluster_args, stream_args=(), error=None):
    """One stream on a fresh cluster: minutes vs batch, caption and final latency, CPU."""
    error = error or wer
    japanese = ["--model", "base", "--language", "ja"] if error is cer else []
    # The whole-file decode (Whisper's own 30 s windows) is the accuracy goal's baseline;
    # the file transcript (`kiroku transcribe`: pieces cut at pauses, as the minutes are)
    # is shown beside it.
    batch_json = batch(kiroku, wav, "--whole", *japanese)
    file_json = batch(kiroku, wav, *japanese)
    cluster = start_cluster(kiroku, work, name, ["--workers", "1", *cluster_args])
    try:
        cpu_before, started = worker_cpu_seconds(cluster), time.monotonic()
        [report] = stream_clients(kiroku, work, wav, 1, name, stream_args)
        cpu = (worker_cpu_seconds(cluster) - cpu_before) / (time.monotonic() - started) / os.cpu_count()
    finally:
        stop_cluster(cluster)
    join = "".join if error is cer else " ".join
    minutes = join(f["segment"]["text"] for f in report["finals"])
    captions = report.get("captions", [])
    caption_lat = shown_latencies(report, None if error is cer else reference_words(batch_json))
    fin = final_latencies(report)
    print(f"  {name} minutes: {minutes}\n  {name} batch:   {batch_json['text']}", file=sys.stderr)
    return {
        "audio_s": batch_json["duration_ms"] / 1000,
        "finals": len(report["finals"]), "captions": len(captions),
        "words": sum(len(f["segment"]["words"]) for f in report["finals"]),
        "caption_p50": pct(caption_lat, 0.5), "caption_p95": pct(caption_lat, 0.95),
        "final_p50": pct(fin, 0.5), "final_p95": pct(fin, 0.95),
        "first_interim": report["first_interim_ms"],
        "minutes_error": error(text, minutes), "batch_error": error(text, batch_json["text"]),
        "file_error": error(text, file_json["text"]),
        "punctuated": "。" in minutes if error is cer else True,
        "cpu": cpu, "reconnects": report["reconnects"],
        "language": report["transcript"].get("language"),
    }


def minutes_table(title, r, unit, before, final_goal):
    print()
    print(title)
    print(f"| metric | this run | before (docs/performance.md, 2026-12-03) | goal |")
    print(f"|---|---|---|---|")
    print(f"| minutes {unit} (streamed at 1x) | {r['minutes_error']:.3f} | {before['minutes']} | "
          f"<= batch + 0.01 = {r['batch_error'] + 0.01:.3f} |")
    print(f"| batch {unit} (`kiroku transcribe --whole`, same audio) | {r['batch_error']:.3f} | {before['batch']} | |")
    print(f"| file {unit} (`kiroku transcribe`: pieces cut at pauses) | {r['file_error']:.3f} | - | |")
    print(f"| finals (utterances) / words | {r['finals']} / {r['words']} | {before['finals']} | |")
    print(f"| caption latency p50 / p95 (word end -> first shown) | {r['caption_p50'] / 1000:.2f} / "
          f"{r['caption_p95'] / 1000:.2f} s | {before['caption']} | no worse |")
    print(f"| final latency p50 / p95 (utterance end -> final) | {r['final_p50'] / 1000:.2f} / "
          f"{r['final_p95'] / 1000:.2f} s | - | p95 <= {final_goal} |")
    print(f"| worker CPU for one stream (% of all cores) | {100 * r['cpu']:.0f}% | - | report |")


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


def stream_clients(kiroku, work, wav, n, tag, extra=(), refusals=False, stagger_ms=0):
    """n `kiroku stream` clients at once (with `stagger_ms`, client i starts i times that
    later); their reports, each with the client's JSON transcript (stdout) added as
    "transcript". With `refusals`, a client refused with RESOURCE_EXHAUSTED gives
    {"refused": <its error>} instead of ending the bench."""
    procs = []
    for i in range(n):
        if i and stagger_ms:
            time.sleep(stagger_ms / 1000)
        report = os.path.join(work, f"{tag}-{i}.json")
        p = subprocess.Popen([kiroku, "stream", wav, "--gateway", "http://" + GRPC, "--format", "json",
                              "--report", report, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append((p, report))
    reports = []
    for p, report in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0 and refusals and "ResourceExhausted" in err.decode():
            reports.append({"refused": err.decode().strip().splitlines()[-1]})
            continue
        if p.returncode != 0:
            sys.exit(f"kiroku stream failed: {err.decode()}")
        try:
            transcript = json.loads(out)
        except ValueError:
            transcript = {}
        with open(report) as f:
            reports.append({**json.load(f), "transcript": transcript})
    return reports


# Runs per sweep point (environment SWEEP_REPEATS, default 1); the table reports the
# median, and the p95 range when there are several runs.
SWEEP_REPEATS = max(1, int(os.environ.get("SWEEP_REPEATS", "1")))
SWEEP_P95_RANGE = {}
# The workers' model (KIROKU_MODEL, which they read; default tiny.en), named in titles.
WORKER_MODEL = os.environ.get("KIROKU_MODEL") or "tiny.en"
# The worker steps swept (environment SWEEP_STEPS, comma-separated ms; default 250,500).
SWEEP_STEPS = [int(v) for v in os.environ.get("SWEEP_STEPS", "250,500").split(",") if v.strip()]
# Start the sweep's clients this many ms apart (environment SWEEP_STAGGER_MS, default 0:
# all at once, the same audio in step, so that every stream's sentence ends, and so its
# utterance finals, fall due at the same moment: the worst case for a worker's queue).
SWEEP_STAGGER_MS = int(os.environ.get("SWEEP_STAGGER_MS", "0"))


# The Japanese sweep's worker model (environment SWEEP_JA_MODEL, default base; e.g.
# base-q8_0 after `kiroku model fetch --model base --quantize q8_0`).
SWEEP_JA_MODEL = os.environ.get("SWEEP_JA_MODEL", "base")
# ... and its model for the minutes (environment SWEEP_JA_FINAL_MODEL, default none: the
# same), e.g. base-q8_0 captions with base finals.
SWEEP_JA_FINAL_MODEL = os.environ.get("SWEEP_JA_FINAL_MODEL", "")


def concurrency_sweep(kiroku, work, voice=None):
    """N clients at once on one worker, for each of SWEEP_STEPS; N = 1..4 always, then on
    while p95 stays within 2 s. English: tiny.en (or KIROKU_MODEL), the 5-sentence
    meeting, WER, caption latency against the batch timeline. With a Japanese `voice`:
    base workers, the Japanese clip streamed with --language ja, CER, caption latency
    against the stream's own word times (characters have no batch timeline to match)."""
    if voice:
        short_wav, short_text = japanese_meeting_clip(work, voice, JAPANESE_SENTENCES, "sweep-ja")
        timeline, error, join = None, cer, "".join
        cluster_args, stream_args, tag = ["--model", SWEEP_JA_MODEL], ["--language", "ja"], "sweepja"
        if SWEEP_JA_FINAL_MODEL:
            cluster_args += ["--final-model", SWEEP_JA_FINAL_MODEL]
    else:
        short_text = " ".join(SENTENCES[:5])
        short_wav = synthesize(work, "meeting-short", short_text)
        timeline, error, join = reference_words(batch(kiroku, short_wav)), wer, " ".join
        cluster_args, stream_args, tag = [], [], "sweep"
    sweep = []
    for step in SWEEP_STEPS:
        cluster = start_cluster(kiroku, work, f"{tag}{step}",
                                ["--workers", "1", "--sessions", "16", *cluster_args],
                                {"KIROKU_WORKER_STEP_MS": str(step), "KIROKU_WORKER_ADMIT_MAX_LAG_S": "0"})
        try:
            n = 1
            while n <= 8:
                # Each point SWEEP_REPEATS times (p95 moves run to run on a shared
                # machine): the median of the runs' p50 and p95, their p95 range.
                p50s, p95s, worst, worst_live = [], [], 0.0, 0.0
                for run in range(SWEEP_REPEATS):
                    reports = stream_clients(kiroku, work, short_wav, n, f"{tag}{step}-{n}-{run}",
                                             stream_args, stagger_ms=SWEEP_STAGGER_MS)
                    lat, by_final = [], []
                    for r in reports:
                        lat += shown_latencies(r, timeline)
                        by_final += shown_latencies(r, timeline, "final")
                    wers = [error(short_text, join(f["segment"]["text"] for f in r["finals"])) for r in reports]
                    # What the viewers read live (captions as first shown), against the script.
                    live = [error(short_text, join(t for t, *_ in first_shown(r))) for r in reports]
                    worst_live = max(worst_live, max(live))
                    p50s.append(pct(lat, 0.5))
                    p95s.append(pct(lat, 0.95))
                    worst = max(worst, max(wers))
                    print(f"  {tag}: step {step} ms, {n} concurrent streams, run {run + 1}/{SWEEP_REPEATS}: "
                          f"p50 {p50s[-1]:.0f} ms p95 {p95s[-1]:.0f} ms worst error {max(wers):.3f}; "
                          f"first shown by their final: {len(by_final)}/{len(lat)} words, "
                          f"p50 {pct(by_final, 0.5):.0f} ms p95 {pct(by_final, 0.95):.0f} ms",
                          file=sys.stderr)
                p95 = statistics.median(p95s)
                sweep.append((step, n, statistics.median(p50s), p95, worst, worst_live))
                SWEEP_P95_RANGE[(tag, step, n)] = (min(p95s), max(p95s))
                if n >= 4 and p95 > 2000:
                    break
                n += 1
        finally:
            stop_cluster(cluster)
    return sweep


def overload(kiroku, work, offered=8):
    """`offered` clients of the 42 s meeting at once on one worker, default admission."""
    text = " ".join(SENTENCES)
    wav = synthesize(work, "meeting-long", text)
    timeline = reference_words(batch(kiroku, wav))
    cluster = start_cluster(kiroku, work, "overload", ["--workers", "1", "--sessions", str(offered)])
    try:
        reports = stream_clients(kiroku, work, wav, offered, "overload", refusals=True)
    finally:
        stop_cluster(cluster)
    rows = []
    for r in reports:
        if "refused" in r:
            rows.append({"outcome": "refused", "detail": r["refused"]})
            continue
        lat = shown_latencies(r, timeline)
        fin = final_latencies(r)
        queued = r.get("queue_left_ms")
        # Words spoken once a worker had the stream: a queued stream's earlier words
        # waited in the queue, however fast the worker is.
        served = shown_latencies(r, timeline, after_ms=queued or 0)
        rows.append({"outcome": "queued, then served" if queued else "served at once",
                     "waited_ms": queued or 0, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
                     "served_p95": pct(served, 0.95),
                     "final_p95": pct(fin, 0.95),
                     "wer": wer(text, " ".join(f["segment"]["text"] for f in r["finals"]))})
    return rows


def overload_table(rows):
    print()
    served = [r for r in rows if r["outcome"] == "served at once"]
    within = [r for r in served if r["p95"] <= 2000]
    late = [r for r in rows if r["outcome"] == "queued, then served"]
    late_within = [r for r in late if r["served_p95"] <= 2000]
    print(f"overload: {len(rows)} streams of the 42 s meeting offered at once to one worker "
          f"(default admission, --sessions {len(rows)}): {len(served)} served at once "
          f"({len(within)} with caption p95 <= 2 s), "
          f"{len(late)} queued then served ({len(late_within)} with caption p95 <= 2 s for the "
          f"words spoken once served), "
          f"{sum(r['outcome'] == 'refused' for r in rows)} refused (goal: 4+ served within bounds, "
          f"the rest queued or refused cleanly, none starved)")
    print("| stream | outcome | waited for a worker | caption latency p50 / p95 (word end -> shown) "
          "| caption p95, words spoken once served | final p95 (utterance end -> final) | minutes WER |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        if r["outcome"] == "refused":
            print(f"| {i} | refused: {r['detail'][:90]} | - | - | - | - | - |")
        else:
            print(f"| {i} | {r['outcome']} | {r['waited_ms'] / 1000:.1f} s | {r['p50'] / 1000:.2f} / "
                  f"{r['p95'] / 1000:.2f} s | {r['served_p95'] / 1000:.2f} s | {r['final_p95'] / 1000:.2f} s "
                  f"| {r['wer']:.3f} |")


def sweep_plot(sweep, path, model):
    """The sweep as an SVG line chart: final latency p50 and p95 against concurrent
    streams, one colour per worker step, the 2 s goal dashed."""
    w, h, left, right, top, bottom = 640, 400, 60, 20, 30, 50
    ns = [n for _, n, *_ in sweep]
    ymax = max(4.0, max((p95 / 1000 for _, _, _, p95, *_ in sweep), default=0) * 1.1)
    xmax = max(ns + [8])

    def x(n):
        return left + (n - 1) / max(xmax - 1, 1) * (w - left - right)

    def y(s):
        return top + (1 - min(s, ymax) / ymax) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="18" text-anchor="middle">Caption latency vs concurrent real-time streams '
           f'(one 2-core worker, {model})</text>',
           f'<line x1="{left}" y1="{y(0)}" x2="{w - right}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{left}" y1="{y(2)}" x2="{w - right}" y2="{y(2)}" stroke="red" stroke-dasharray="4 4"/>',
           f'<text x="{w - right}" y="{y(2) - 4}" text-anchor="end" fill="red">2 s goal (p95)</text>',
           f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">concurrent streams</text>',
           f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">seconds</text>']
    for n in range(1, xmax + 1):
        out.append(f'<text x="{x(n)}" y="{y(0) + 16}" text-anchor="middle">{n}</text>')
    for t in range(0, int(ymax) + 1):
        out.append(f'<text x="{left - 6}" y="{y(t) + 4}" text-anchor="end">{t}</text>')
    colours = {250: "#1f77b4", 500: "#ff7f0e"}
    for k, step in enumerate(sorted({st for st, *_ in sweep})):
        colour = colours.get(step, "#2ca02c")
        rows = [r for r in sweep if r[0] == step]
        for label, idx, dash in (("p95", 3, ""), ("p50", 2, ' stroke-dasharray="2 3"')):
            points = " ".join(f"{x(n):.1f},{y(r[idx] / 1000):.1f}" for r in rows for n in [r[1]])
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            ly = top + 16 + 16 * (2 * k + (idx == 2))
            out.append(f'<line x1="{left + 10}" y1="{ly - 4}" x2="{left + 40}" y2="{ly - 4}" stroke="{colour}" '
                       f'stroke-width="2"{dash}/><text x="{left + 46}" y="{ly}">step {step} ms, {label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def sweep_table(sweep, tag, model, meeting, unit, goal, work):
    """The sweep's table and plot (SVG, and PNG when rsvg-convert is there)."""
    held = max([n for _, n, _, p95, _, _ in sweep if p95 <= 2000], default=0)
    print()
    print(f"concurrent real-time streams with p95 <= 2 s (any step), {model}: {held} (goal >= {goal})")
    start = f"clients started {SWEEP_STAGGER_MS} ms apart" if SWEEP_STAGGER_MS else "clients started together"
    print(f"concurrency sweep ({meeting}, every stream at real time, {start}; "
          "caption latency, word end -> shown):")
    if SWEEP_REPEATS > 1:
        print(f"(median of {SWEEP_REPEATS} runs per row; p95 range = lowest to highest run)")
    print(f"| worker step | streams | p50 | p95 | p95 range | worst minutes {unit} | worst live {unit} |")
    print("|---|---|---|---|---|---|---|")
    for step, n, p50, p95, worst, worst_live in sweep:
        lo, hi = SWEEP_P95_RANGE.get((tag, step, n), (p95, p95))
        print(f"| {step} ms | {n} | {p50 / 1000:.2f} s | {p95 / 1000:.2f} s | "
              f"{lo / 1000:.2f}–{hi / 1000:.2f} s | {worst:.3f} | {worst_live:.3f} |")
    plot = os.path.join(work, f"{tag}.svg")
    sweep_plot(sweep, plot, model)
    print(f"plot: {plot}")
    png = plot[:-4] + ".png"
    if shutil.which("rsvg-convert"):
        subprocess.run(["rsvg-convert", "-o", png, plot], check=True)
        print(f"plot: {png}")
    else:
        print("no PNG: rsvg-convert missing (Debian librsvg2-bin; `make bench-stream` installs it)")


def histogram(admin, name):
    """The cumulative buckets {upper bound: count} of histogram `name` on an admin address."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
        text = response.read().decode()
    buckets = {}
    for m in re.finditer(name + r'_bucket\{le="([^"]+)"\} (\S+)', text):
        buckets[float(m.group(1))] = float(m.group(2))
    return buckets


def bucket_quantile(before, after, q):
    """The upper bound of the bucket holding quantile q of what was observed between two
    scrapes of a histogram (Prometheus' resolution: the bucket, not the value)."""
    delta = {le: after[le] - before.get(le, 0) for le in sorted(after)}
    total = delta.get(float("inf"), 0)
    if not total:
        return None
    for le, count in delta.items():
        if count >= q * total:
            return le
    return float("inf")


def worker_admins(work, name):
    """The workers' admin addresses, from `kiroku up`'s output (the gateway's is ADMIN)."""
    with open(os.path.join(work, f"up-{name}.log")) as f:
        line = next(l for l in f if l.strip().startswith("admin:"))
    return re.findall(r"worker-\d+=(?:http://)?(\S+)", line)


# Where a frame's time goes, from each process's histograms: gateway publish -> stored
# (JetStream ack), stored -> received by the worker.
STAGES = (("publish", "kiroku_audio_publish_seconds", "gateway"),
          ("delivery", "kiroku_audio_delivery_seconds", "worker"))


# A NATS server of its own for the plumbing part (`make bench-stream` fetches one:
# build/nats-bench/nats-server): the production version line, and a throwaway store
# instead of leaving ~300 MB of audio per 1,000-stream run in the machine's NATS.
NATS_BENCH_PORT = 4290


def nats_servers(work):
    """The NATS servers the plumbing part runs against: (label, url, process or None).
    With KIROKU_BENCH_NATS_SERVER (a nats-server binary): that server with default
    durability, then with `sync_interval: always` (every write fsynced before its ack, as
    production's deploy/nats/nats.conf runs). Without it: the machine's NATS."""
    binary = os.environ.get("KIROKU_BENCH_NATS_SERVER", "")
    if not binary:
        yield "machine's NATS (KIROKU_NATS_URL)", os.environ.get("KIROKU_NATS_URL", "nats://127.0.0.1:4222"), None
        return
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip().replace(":", "")
    for sync in (False, True):
        store = os.path.join(work, "nats-plumbing")
        shutil.rmtree(store, ignore_errors=True)
        conf = os.path.join(work, "nats-plumbing.conf")
        with open(conf, "w") as f:
            f.write(f"listen: 127.0.0.1:{NATS_BENCH_PORT}\njetstream {{\n  store_dir: {json.dumps(store)}\n"
                    + ("  sync_interval: always\n" if sync else "") + "}\n")
        log = open(os.path.join(work, "nats-plumbing.log"), "w")
        server = subprocess.Popen([binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", NATS_BENCH_PORT), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            server.kill()
            sys.exit(f"{binary} did not start: see {log.name}")
        try:
            yield f"{version}" + (", sync_interval: always" if sync else ""), f"nats://127.0.0.1:{NATS_BENCH_PORT}", server
        finally:
            server.terminate()
            server.wait()
            shutil.rmtree(store, ignore_errors=True)


def plumbing_latency(kiroku, work):
    plumbing = []
    for label, url, server in nats_servers(work):
        # With fsync on every write only 100 streams: what durability costs per frame.
        counts = (100,) if "sync_interval" in label else (10, 100, 1000)
        # Admission off: it spaces new sessions 3 s apart (each must show its cost first),
        # which at 10+ streams would measure the queue, not the plumbing.
        cluster = start_cluster(kiroku, work, "plumbing", ["--engine", "null-benchmark", "--sessions", "5000"],
                                {"KIROKU_WORKER_ADMIT_MAX_LAG_S": "0", "KIROKU_NATS_URL": url})
        # One worker in this cluster; several would need their buckets summed.
        admins = {"gateway": ADMIN, "worker": worker_admins(work, "plumbing")[0]}

        def scrape():
            return {stage: histogram(admins[role], metric) for stage, metric, role in STAGES}

        try:
            for streams in counts:
                before = scrape()
                out = subprocess.run([kiroku, "bench-plumbing", "--gateway", "http://" + GRPC, "--streams",
                                      str(streams), "--seconds", "10"], capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(out.stderr)
                after = scrape()
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result["nats"] = label
                result["stages"] = {stage: {q: bucket_quantile(before[stage], after[stage], q) for q in (0.5, 0.99)}
                                    for stage, _, _ in STAGES}
                plumbing.append(result)
                print(f"  {label}: " + out.stderr.strip().splitlines()[0], file=sys.stderr)
        finally:
            stop_cluster(cluster)
    return plumbing


def bound_ms(seconds):
    return "-" if seconds is None else "> 2500 ms" if seconds == float("inf") else f"<= {seconds * 1000:g} ms"


def main():
    kiroku, work = sys.argv[1], sys.argv[2]
    all_parts = ["english", "english-base", "long", "sweep", "sweep-ja", "overload", "plumbing", "japanese"]
    parts = sys.argv[3:] or all_parts
    unknown = set(parts) - set(all_parts)
    if unknown:
        sys.exit(f"unknown parts {sorted(unknown)}: use {', '.join(all_parts)}")
    os.makedirs(work, exist_ok=True)
    # The voice is checked before any part runs.
    voice = japanese_voice(work) if {"japanese", "sweep-ja"} & set(parts) else None
    sweep = concurrency_sweep(kiroku, work) if "sweep" in parts else []
    sweep_ja = concurrency_sweep(kiroku, work, voice) if "sweep-ja" in parts else []
    overloaded = overload(kiroku, work) if "overload" in parts else []
    plumbing = plumbing_latency(kiroku, work) if "plumbing" in parts else []
    minutes = []
    if "english" in parts:
        text = " ".join(SENTENCES)
        minutes.append((f"English minutes: {WORKER_MODEL}, the 42 s meeting", minutes_run(
            kiroku, work, "minutes-en", synthesize(work, "meeting-long", text), text, []), "WER",
            {"minutes": "0.172", "batch": "0.060", "finals": "40 for 59 words", "caption": "0.51 / 1.25 s"},
            "1.5 s"))
    if "english-base" in parts:
        text = " ".join(SENTENCES)
        minutes.append(("English minutes: tiny.en captions, base finals (--final-model base), the 42 s meeting",
                        minutes_run(kiroku, work, "minutes-en-base", synthesize(work, "meeting-long", text), text,
                                    ["--final-model", "base"]), "WER",
                        {"minutes": "-", "batch": "0.060", "finals": "-", "caption": "-"}, "1.5 s"))
    if "long" in parts:
        wav, text = long_meeting(work)
        minutes.append((f"English minutes: {WORKER_MODEL}, 3.5-minute meeting, three voices", minutes_run(
            kiroku, work, "minutes-long", wav, text, []), "WER",
            {"minutes": "-", "batch": "-", "finals": "-", "caption": "-"}, "1.5 s"))
    if "japanese" in parts:
        wav, text = japanese_meeting_clip(work, voice, JAPANESE_SENTENCES, "minutes-ja")
        minutes.append(("Japanese minutes: base, --language ja", minutes_run(
            kiroku, work, "minutes-ja", wav, text, ["--model", "base"], ["--language", "ja"], cer), "CER",
            {"minutes": "0.138", "batch": "0.033", "finals": "-", "caption": "-"}, "2.5 s"))

    if sweep:
        sweep_table(sweep, "sweep", WORKER_MODEL, "short meeting", "WER", 4, work)
    if sweep_ja:
        finals = f" (finals: {SWEEP_JA_FINAL_MODEL})" if SWEEP_JA_FINAL_MODEL else ""
        sweep_table(sweep_ja, "sweepja", f"{SWEEP_JA_MODEL}{finals}, Japanese", "Japanese clip, --language ja", "CER", 2, work)
    if overloaded:
        overload_table(overloaded)
    if plumbing:
        print()
        print("plumbing (BENCHMARK-ONLY null engine, no inference; frame sent -> echo at client). Every")
        print("frame; after each stream's first second (steady state); each stream's first frame, which")
        print("waits for its session to start (job queued, taken by a worker, its audio followed):")
        print("| NATS | streams | frames answered | every frame p50 / p99 / max | steady p50 / p99 / max | "
              "first frame p50 / p99 / max | goal p99 |")
        print("|---|---|---|---|---|---|---|")

        def triple(q):
            return " / ".join("-" if q.get(k) is None else f"{q[k]:.1f}" for k in ("p50_ms", "p99_ms", "max_ms")) + " ms"
        for p in plumbing:
            print(f"| {p['nats']} | {p['streams']} | {p['frames_answered']}/{p['frames_expected']} | {triple(p)} | "
                  f"{triple(p['steady'])} | {triple(p['first_frame'])} | <= 5 ms |")
        print()
        print("where a frame's time goes (bucket bounds from the processes' histograms): gateway publish ->")
        print("JetStream ack (kiroku_audio_publish_seconds), stored -> worker (kiroku_audio_delivery_seconds):")
        print("| NATS | streams | publish p50 | publish p99 | delivery p50 | delivery p99 |")
        print("|---|---|---|---|---|---|")
        for p in plumbing:
            st = p["stages"]
            print(f"| {p['nats']} | {p['streams']} | {bound_ms(st['publish'][0.5])} | {bound_ms(st['publish'][0.99])} | "
                  f"{bound_ms(st['delivery'][0.5])} | {bound_ms(st['delivery'][0.99])} |")
    for title, result, unit, before, goal in minutes:
        minutes_table(title + f" ({result['audio_s']:.0f} s, release build, 2-core machine, paced at 1x)",
                      result, unit, before, goal)
        if unit == "CER":
            print(f"| minutes punctuated (。) | {'yes' if result['punctuated'] else 'no'} | no | yes |")


if __name__ == "__main__":
    main()
