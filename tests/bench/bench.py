#!/usr/bin/env python3
"""`make bench`: Kiroku's engine against faster-whisper on the same audio and model.

Synthesises ~60 s of meeting speech with espeak-ng, then runs, alternating, several
`kiroku transcribe` variants and faster-whisper (same CTranslate2 folder `kiroku model
fetch` extracted, int8, greedy) as separate processes. Each process reports its own
inference time (model load excluded); peak memory is the child's max RSS from wait4.
Prints one table: median real-time factor, ratio to faster-whisper int8, peak RSS, WER.

Usage: bench.py KIROKU_BIN MODEL_DIR WORK_DIR [ROUNDS]
"""
import os
import re
import json
import statistics
import subprocess
import sys

SENTENCES_FILE = os.path.join(os.path.dirname(__file__), "..", "support", "meeting_sentences.txt")
with open(SENTENCES_FILE, encoding="utf-8") as f:
    SENTENCES = [line.strip() for line in f if line.strip()]

FW_RUNNER = r"""
import sys, time, json
from faster_whisper import WhisperModel
ct2, wav, threads, words, compute = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
model = WhisperModel(ct2, device="cpu", compute_type=compute, cpu_threads=threads)
t = time.perf_counter()
segments, info = model.transcribe(wav, beam_size=1, language="en", vad_filter=False,
                                  condition_on_previous_text=False, word_timestamps=words)
text = " ".join(s.text.strip() for s in segments)
print(json.dumps({"seconds": time.perf_counter() - t, "audio": info.duration, "text": text}))
"""


def run_measured(cmd):
    """Runs cmd; returns stdout, stderr and the child's peak RSS in MB (from wait4)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Read the pipes before reaping so the child cannot block on a full pipe.
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed: {err.decode()}")
    return out.decode(), err.decode(), usage.ru_maxrss / 1024.0


def normalize(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference, hypothesis):
    r, h = normalize(reference), normalize(hypothesis)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r):
        cur = [i + 1] + [0] * len(h)
        for j, hw in enumerate(h):
            cur[j + 1] = min(prev[j] + (rw != hw), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(h)] / max(1, len(r))


def main():
    kiroku, model_dir, work = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    threads = str(os.cpu_count() or 2)
    os.makedirs(work, exist_ok=True)
    ct2 = os.path.join(model_dir, "ct2-tiny.en")
    f16 = os.path.join(model_dir, "ggml-tiny.en.bin")
    q8 = os.path.join(model_dir, "ggml-tiny.en-q8_0.bin")
    if not os.path.exists(q8):
        subprocess.run([kiroku, "model", "convert", ct2, q8, "--quantize", "q8_0"], check=True)

    reference = " ".join(SENTENCES)
    raw, wav = os.path.join(work, "speech.espeak.wav"), os.path.join(work, "speech.wav")
    if not os.path.exists(wav):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-g", "8", "-w", raw, reference], check=True)
        subprocess.run(["sox", raw, "-b", "16", "-r", "16000", "-c", "1", wav, "pad", "0.5", "0.5"], check=True)
    audio_s = float(subprocess.run(["soxi", "-D", wav], capture_output=True, text=True, check=True).stdout)

    def kiroku_variant(model, *extra):
        def go():
            out, err, rss = run_measured([kiroku, "transcribe", wav, "--model", model, "--threads", threads, "--timings", *extra])
            rtf = float(re.search(r"rtf=([0-9.]+)", err).group(1))
            return rtf, rss, out
        return go

    def fw_variant(words, compute="int8"):
        def go():
            py = os.path.join(os.path.dirname(work), "bench-venv", "bin", "python")
            out, _, rss = run_measured([py, "-c", FW_RUNNER, ct2, wav, threads, "1" if words else "0", compute])
            result = json.loads(out.strip().splitlines()[-1])
            return result["seconds"] / result["audio"], rss, result["text"]
        return go

    variants = [
        ("faster-whisper int8 greedy (baseline)", fw_variant(False)),
        ("faster-whisper int8 greedy + word timestamps", fw_variant(True)),
        ("faster-whisper float32 greedy", fw_variant(False, "float32")),
        ("kiroku f16 greedy", kiroku_variant(f16)),
        ("kiroku q8_0 greedy", kiroku_variant(q8)),
        ("kiroku q8_0 greedy, flash attention", kiroku_variant(q8, "--flash-attn")),
        ("kiroku q8_0 beam 5", kiroku_variant(q8, "--beam", "5")),
    ]
    results = {name: [] for name, _ in variants}
    for r in range(rounds):
        for name, go in variants:  # alternate variants within each round
            rtf, rss, text = go()
            results[name].append((rtf, rss, text))
            print(f"round {r + 1}/{rounds}: {name}: rtf {rtf:.4f}", file=sys.stderr)

    base = statistics.median(x[0] for x in results[variants[0][0]])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    avx512 = "avx512f" in open("/proc/cpuinfo").read()
    print(f"\nCPU: {cpu}, {threads} cores, AVX-512 {'present' if avx512 else 'absent'} "
          f"(faster-whisper dispatches at run time; kiroku is the portable AVX2 build)")
    print(f"{audio_s:.1f} s of espeak-ng speech, {threads} threads, {rounds} alternating rounds, "
          f"median of rounds; inference only (model load excluded); peak RSS of the whole process\n")
    print(f"| {'engine':<46} | {'RTF':>7} | {'vs faster-whisper int8':>22} | {'peak RSS MB':>11} | {'WER':>6} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 24}|{'-' * 13}|{'-' * 8}|")
    for name, _ in variants:
        rtf = statistics.median(x[0] for x in results[name])
        rss = max(x[1] for x in results[name])
        w = wer(reference, results[name][-1][2])
        print(f"| {name:<46} | {rtf:7.4f} | {rtf / base:21.2f}x | {rss:11.0f} | {w:6.3f} |")

    # Conversion check: the converted f16 model should decode (greedy) like the original
    # CTranslate2 weights in float32 do in faster-whisper.
    ours = normalize(results["kiroku f16 greedy"][-1][2])
    theirs = normalize(results["faster-whisper float32 greedy"][-1][2])
    differing = round(wer(" ".join(theirs), " ".join(ours)) * len(theirs))
    print(f"\nkiroku f16 vs faster-whisper float32, same CT2 weights: {differing} of {len(theirs)} words differ")


if __name__ == "__main__":
    main()
