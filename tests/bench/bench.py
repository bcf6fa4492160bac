#!/usr/bin/env python3
"""`make bench`: Kiroku's engine against faster-whisper on the same audio and model.

Two tables, each from separate processes run alternately (variant after variant, round
after round), faster-whisper on the same CTranslate2 folder `kiroku model fetch`
extracted, int8, greedy. Each process reports its own inference time (model load
excluded); peak memory is the child's max RSS from wait4. Each row: median real-time
factor, ratio to faster-whisper int8, peak RSS, and accuracy.

1. English, tiny.en: ~60 s of meeting speech synthesised with espeak-ng; WER.
2. Japanese, base (multilingual), language ja: the sentences of
   tests/support/japanese_meeting_sentences.txt spoken by Open JTalk (voice Mei) and
   joined into one clip exactly as the Rust tests do (tests/src/speech.rs,
   crates/kiroku-cli/tests/japanese.rs); CER with the normalization of tests/src/cer.rs.
   The voice is $KIROKU_TEST_HTS_VOICE, else WORK_DIR/../voice/mei_normal.htsvoice
   (`make japanese-voice`).

Usage: bench.py KIROKU_BIN MODEL_DIR WORK_DIR [ROUNDS [PART...]]
PART: english, japanese; default both.
"""
import os
import re
import json
import statistics
import subprocess
import sys
import unicodedata

SUPPORT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support")


def read_sentences(name):
    with open(os.path.join(SUPPORT_DIR, name), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


SENTENCES = read_sentences("meeting_sentences.txt")
JAPANESE_SENTENCES = read_sentences("japanese_meeting_sentences.txt")

# The Open JTalk dictionary Debian's open-jtalk-mecab-naist-jdic installs (as in
# tests/src/speech.rs).
OPEN_JTALK_DICTIONARY = "/var/lib/mecab/dic/open-jtalk/naist-jdic"

FW_RUNNER = r"""
import sys, time, json
from faster_whisper import WhisperModel
ct2, wav, threads, words, compute, language = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                               sys.argv[4] == "1", sys.argv[5], sys.argv[6])
model = WhisperModel(ct2, device="cpu", compute_type=compute, cpu_threads=threads)
t = time.perf_counter()
segments, info = model.transcribe(wav, beam_size=1, language=language, vad_filter=False,
                                  condition_on_previous_text=False, word_timestamps=words)
# Japanese is written without spaces between words: segments join without one.
text = ("" if language in ("ja", "zh") else " ").join(s.text.strip() for s in segments)
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


def edit_distance(reference, hypothesis):
    """Levenshtein distance between two sequences (substitutions, insertions, deletions)."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference):
        cur = [i + 1] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis):
            cur[j + 1] = min(prev[j] + (r != h), prev[j + 1] + 1, cur[j] + 1)
        prev = cur
    return prev[len(hypothesis)]


def normalize(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(reference, hypothesis):
    r, h = normalize(reference), normalize(hypothesis)
    return edit_distance(r, h) / max(1, len(r))


def normalize_chars(text):
    """tests/src/cer.rs `normalize`: NFKC, lower-cased, letters and digits only.

    Python's isalnum() (letter or number categories) stands for Rust's is_alphanumeric()
    (Unicode Alphabetic or Numeric); they differ only on combining marks that are
    Other_Alphabetic (Indic vowel signs, …), none of which occurs in Japanese: kanji,
    kana, ー and 々 are kept either way."""
    return [c for c in unicodedata.normalize("NFKC", text).lower() if c.isalnum()]


def char_edits(reference, hypothesis):
    return edit_distance(normalize_chars(reference), normalize_chars(hypothesis))


def cer(reference, hypothesis):
    """tests/src/cer.rs `character_error_rate`: character edits over the normalized
    reference's length; an empty reference scores 0 against an empty hypothesis, else 1."""
    reference_chars = len(normalize_chars(reference))
    if reference_chars == 0:
        return 0.0 if not normalize_chars(hypothesis) else 1.0
    return char_edits(reference, hypothesis) / reference_chars


def japanese_voice(work):
    voice = os.environ.get("KIROKU_TEST_HTS_VOICE") or os.path.join(
        os.path.dirname(os.path.abspath(work)), "voice", "mei_normal.htsvoice")
    if not os.path.isfile(voice):
        sys.exit(f"{voice} is missing: run `make japanese-voice` (or set KIROKU_TEST_HTS_VOICE)")
    if not os.path.isdir(OPEN_JTALK_DICTIONARY):
        sys.exit(f"{OPEN_JTALK_DICTIONARY} is missing: install open-jtalk-mecab-naist-jdic (make deps)")
    return voice


def synthesize_japanese(work, voice, name, text, lead_silence_s):
    """tests/src/speech.rs `synthesize_japanese`: Open JTalk (48 kHz), then sox to 16 kHz
    mono 16-bit with `lead_silence_s` of silence before and 0.4 s after."""
    text_file = os.path.join(work, name + ".txt")
    with open(text_file, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    raw, out = os.path.join(work, name + ".jtalk.wav"), os.path.join(work, name + ".wav")
    subprocess.run(["open_jtalk", "-x", OPEN_JTALK_DICTIONARY, "-m", voice, "-ow", raw, text_file],
                   check=True)
    # -G: guard against clipping while resampling (Open JTalk speaks near full scale).
    subprocess.run(["sox", "-G", raw, "-b", "16", "-r", "16000", "-c", "1", out,
                    "pad", f"{lead_silence_s:g}", "0.4"], check=True)
    return out


def japanese_meeting_clip(work, voice, sentences, name="japanese-meeting"):
    """crates/kiroku-cli/tests/japanese.rs `meeting_clip`: every sentence synthesised on
    its own (0.5 s of silence before the first, 0.4 s after each), joined by sox.
    Returns the clip and the text it reads (the sentences joined without spaces)."""
    parts = [synthesize_japanese(work, voice, f"{name}-sentence{i}", sentence, 0.5 if i == 0 else 0.0)
             for i, sentence in enumerate(sentences)]
    clip = os.path.join(work, name + ".wav")
    subprocess.run(["sox", *parts, clip], check=True)
    return clip, "".join(sentences)


def audio_seconds(wav):
    return float(subprocess.run(["soxi", "-D", wav], capture_output=True, text=True, check=True).stdout)


def ensure_q8(kiroku, ct2, q8):
    if not os.path.exists(q8):
        subprocess.run([kiroku, "model", "convert", ct2, q8, "--quantize", "q8_0"], check=True)


def measure(kiroku, work, wav, ct2, f16, q8, language, rounds, threads):
    """Runs every variant `rounds` times, alternating; returns the variant names in table
    order and, per name, [(rtf, peak RSS MB, text)] for each round."""

    def kiroku_variant(model, *extra):
        def go():
            out, err, rss = run_measured([kiroku, "transcribe", wav, "--model", model, "--threads", threads,
                                          "--language", language, "--timings", *extra])
            rtf = float(re.search(r"rtf=([0-9.]+)", err).group(1))
            return rtf, rss, out
        return go

    def fw_variant(words, compute="int8"):
        def go():
            py = os.path.join(os.path.dirname(os.path.abspath(work)), "bench-venv", "bin", "python")
            out, _, rss = run_measured([py, "-c", FW_RUNNER, ct2, wav, threads, "1" if words else "0", compute,
                                        language])
            result = json.loads(out.strip().splitlines()[-1])
            return result["seconds"] / result["audio"], rss, result["text"]
        return go

    variants = [
        ("faster-whisper int8 greedy (baseline)", fw_variant(False)),
        ("faster-whisper int8 greedy + word timestamps", fw_variant(True)),
        ("faster-whisper float32 greedy", fw_variant(False, "float32")),
        ("kiroku f16 greedy", kiroku_variant(f16)),
        ("kiroku q8_0 greedy", kiroku_variant(q8)),
        ("kiroku q8_0 greedy, whole file (30 s windows)", kiroku_variant(q8, "--whole")),
        ("kiroku f16 greedy, whole file (30 s windows)", kiroku_variant(f16, "--whole")),
        ("kiroku q8_0 greedy, flash attention", kiroku_variant(q8, "--flash-attn")),
        ("kiroku q8_0 beam 5", kiroku_variant(q8, "--beam", "5")),
    ]
    results = {name: [] for name, _ in variants}
    for r in range(rounds):
        for name, go in variants:  # alternate variants within each round
            rtf, rss, text = go()
            results[name].append((rtf, rss, text))
            print(f"{language} round {r + 1}/{rounds}: {name}: rtf {rtf:.4f}", file=sys.stderr)
    return [name for name, _ in variants], results


def print_table(names, results, score_name, score):
    """The rows: median RTF, ratio to the first row's median, max peak RSS, and `score` of
    the last round's transcript."""
    base = statistics.median(x[0] for x in results[names[0]])
    print(f"| {'engine':<46} | {'RTF':>7} | {'vs faster-whisper int8':>22} | {'peak RSS MB':>11} | {score_name:>6} |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 24}|{'-' * 13}|{'-' * 8}|")
    for name in names:
        rtf = statistics.median(x[0] for x in results[name])
        rss = max(x[1] for x in results[name])
        print(f"| {name:<46} | {rtf:7.4f} | {rtf / base:21.2f}x | {rss:11.0f} | {score(results[name][-1][2]):6.3f} |")


def main():
    kiroku, model_dir, work = sys.argv[1], sys.argv[2], sys.argv[3]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    parts = sys.argv[5:] or ["english", "japanese"]
    if set(parts) - {"english", "japanese"}:
        sys.exit(f"unknown parts {parts}: use english, japanese")
    threads = str(os.cpu_count() or 2)
    os.makedirs(work, exist_ok=True)
    voice = japanese_voice(work) if "japanese" in parts else None  # checked before any round
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    avx512 = "avx512f" in open("/proc/cpuinfo").read()
    print(f"\nCPU: {cpu}, {threads} cores, AVX-512 {'present' if avx512 else 'absent'} "
          f"(faster-whisper dispatches at run time; kiroku is the portable AVX2 build)")
    if "english" in parts:
        english(kiroku, model_dir, work, rounds, threads)
    if "japanese" in parts:
        japanese(kiroku, model_dir, work, rounds, threads, voice)


def english(kiroku, model_dir, work, rounds, threads):
    """tiny.en on ~60 s of espeak-ng speech; WER."""
    ct2 = os.path.join(model_dir, "ct2-tiny.en")
    f16 = os.path.join(model_dir, "ggml-tiny.en.bin")
    q8 = os.path.join(model_dir, "ggml-tiny.en-q8_0.bin")
    ensure_q8(kiroku, ct2, q8)
    reference = " ".join(SENTENCES)
    raw, wav = os.path.join(work, "speech.espeak.wav"), os.path.join(work, "speech.wav")
    if not os.path.exists(wav):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-g", "8", "-w", raw, reference], check=True)
        subprocess.run(["sox", raw, "-b", "16", "-r", "16000", "-c", "1", wav, "pad", "0.5", "0.5"], check=True)
    audio_s = audio_seconds(wav)
    names, results = measure(kiroku, work, wav, ct2, f16, q8, "en", rounds, threads)

    print(f"{audio_s:.1f} s of espeak-ng speech, {threads} threads, {rounds} alternating rounds, "
          f"median of rounds; inference only (model load excluded); peak RSS of the whole process\n")
    print_table(names, results, "WER", lambda text: wer(reference, text))
    # Conversion check: the converted f16 model should decode (greedy) like the original
    # CTranslate2 weights in float32 do in faster-whisper.
    ours = normalize(results["kiroku f16 greedy"][-1][2])
    theirs = normalize(results["faster-whisper float32 greedy"][-1][2])
    differing = round(wer(" ".join(theirs), " ".join(ours)) * len(theirs))
    print(f"\nkiroku f16 vs faster-whisper float32, same CT2 weights: {differing} of {len(theirs)} words differ",
          flush=True)


def japanese(kiroku, model_dir, work, rounds, threads, voice):
    """The multilingual base model (`kiroku model fetch --model base` leaves its
    CTranslate2 folder in MODEL_DIR/ct2-base) on the Open JTalk meeting clip; CER."""
    ct2 = os.path.join(model_dir, "ct2-base")
    f16 = os.path.join(model_dir, "ggml-base.bin")
    q8 = os.path.join(model_dir, "ggml-base-q8_0.bin")
    ensure_q8(kiroku, ct2, q8)
    wav, reference = japanese_meeting_clip(work, voice, JAPANESE_SENTENCES)
    audio_s = audio_seconds(wav)
    names, results = measure(kiroku, work, wav, ct2, f16, q8, "ja", rounds, threads)

    print(f"\nJapanese: base (multilingual), language ja; {audio_s:.1f} s of Open JTalk speech "
          f"(voice Mei, {len(JAPANESE_SENTENCES)} meeting sentences), {threads} threads, {rounds} alternating "
          f"rounds, median of rounds; CER on NFKC text without punctuation and spaces\n")
    print_table(names, results, "CER", lambda text: cer(reference, text))
    ours = results["kiroku f16 greedy"][-1][2]
    theirs = results["faster-whisper float32 greedy"][-1][2]
    print(f"\nkiroku f16 vs faster-whisper float32, same CT2 weights (base, ja): "
          f"{char_edits(theirs, ours)} of {len(normalize_chars(theirs))} characters differ")
    print("\nlast round's transcripts (CER ignores the spaces between segments):")
    print(f"{'reference:':<37}{reference}")
    for name in names:
        print(f"{name + ':':<37}{' '.join(results[name][-1][2].split())}")


if __name__ == "__main__":
    main()
