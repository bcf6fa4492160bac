#!/usr/bin/env python3
"""Voice activity on noisy speech: the live path's energy VAD against Silero VAD.

Utterance ends decide when a live stream's finals come (docs/streaming.md). The energy
VAD (a 20 ms block is speech when its RMS is at or above -40 dBFS) was tuned on clean
synthetic speech. This script makes noisy versions of the meeting (the turns of
tests/support/long_meeting.txt, three espeak-ng voices, each turn synthesized alone so
its true speech start and end are known) and compares, per condition:

- ends found: true turn ends followed by a detected utterance end within 2 s (a missed
  end delays that turn's final to the 20 s cut);
- end delay p50 / p95: detected end minus the turn's true speech end (the finalizing
  silence included: 300 ms is the floor);
- ends inside a turn: detected ends more than 0.2 s inside a turn's speech (most turns
  hold two or three sentences: an end at a sentence's pause is right; fewer than the clean
  run's means pauses were missed);
- noise utterances: detected utterances that overlap no speech.

Both of Kiroku's detectors run as the worker runs them (`examples/vad_events.rs`: the
streaming policy fed 100 ms chunks; Silero through tract). As a reference, Silero VAD v6
(the ONNX model inside the PyPI faster-whisper 1.2.1 wheel) also runs through onnxruntime
on 512-sample windows with faster-whisper's thresholds (speech from 0.5, silence below
0.35) and the same closing rule (300 ms of silence, at least 100 ms of speech).

Usage: vad_trials.py VAD_EVENTS_BIN SILERO_ONNX WORK_DIR
(`make vad-trials` builds the first and runs it in the bench venv, which has onnxruntime,
numpy and the faster-whisper wheel with the model.)
"""
import json
import os
import subprocess
import sys
import wave

import numpy as np

RATE = 16000
HERE = os.path.dirname(os.path.abspath(__file__))
TURNS_FILE = os.path.join(HERE, "..", "support", "long_meeting.txt")
VOICES = {"A": "en-us", "B": "en-gb+m3", "C": "en-us+f3"}
BLOCK_RMS = 0.01  # the energy VAD's threshold, only to find the clean turns' bounds
FINALIZE_S, MIN_SPEECH_S = 0.3, 0.1


def read_wav(path):
    with wave.open(path) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


def write_wav(path, samples):
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def synthesize(work, name, text, voice):
    raw, out = os.path.join(work, name + ".raw.wav"), os.path.join(work, name + ".wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "155", "-w", raw, text], check=True)
    subprocess.run(["sox", raw, "-b", "16", "-r", str(RATE), "-c", "1", out], check=True)
    return read_wav(out)


def speech_bounds(samples):
    """First and last 20 ms block at or above the threshold (clean audio)."""
    blocks = samples[: len(samples) // 320 * 320].reshape(-1, 320)
    loud = np.nonzero(np.sqrt((blocks ** 2).mean(axis=1)) >= BLOCK_RMS)[0]
    return loud[0] * 320, (loud[-1] + 1) * 320


def turns():
    """(speaker, text) of each turn."""
    with open(TURNS_FILE, encoding="utf-8") as f:
        return [line.strip().split("|", 1) for line in f if "|" in line]


def meeting(work):
    """The clean meeting and each turn's true (start, end) in seconds."""
    turns_ = turns()
    pieces, truth, at = [np.zeros(RATE // 2, np.float32)], [], RATE // 2
    for i, (speaker, text) in enumerate(turns_):
        audio = synthesize(work, f"turn-{i}", text, VOICES.get(speaker, "en-us+f3"))
        start, end = speech_bounds(audio)
        audio = audio[start:end]
        truth.append((at / RATE, (at + len(audio)) / RATE))
        same = i + 1 < len(turns_) and turns_[i + 1][0] == speaker
        gap = int(RATE * (0.4 if same else 0.6 + 0.1 * (i % 5)))
        pieces += [audio, np.zeros(gap, np.float32)]
        at += len(audio) + gap
    return np.concatenate(pieces), truth


def rms(x):
    return float(np.sqrt((x ** 2).mean()))


def pink(n, rng):
    """Pink noise (1/f) by filtering white noise in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    noise = np.fft.irfft(spectrum, n)
    return (noise / rms(noise)).astype(np.float32)


def conditions(clean, truth, work):
    rng = np.random.default_rng(7)
    speech_rms = rms(np.concatenate([clean[int(s * RATE):int(e * RATE)] for s, e in truth]))
    out = {"clean": clean}
    for snr in (20, 10):
        out[f"pink noise, SNR {snr} dB"] = clean + pink(len(clean), rng) * speech_rms / 10 ** (snr / 20)
    # Crosstalk: another voice reading the same turns backwards, 15 dB below, all along.
    other = np.concatenate([synthesize(work, f"cross-{i}", " ".join(text.split()[::-1]), "en-gb+f4")
                            for i, (_, text) in enumerate(turns()[:6])])
    other = np.tile(other, len(clean) // len(other) + 1)[: len(clean)]
    out["crosstalk 15 dB below"] = clean + other * speech_rms / rms(other) / 10 ** (15 / 20)
    # Breaths and clicks: a 250 ms burst of brown noise in every pause, 10 dB below speech.
    bursts = clean.copy()
    for (_, end), (start, _) in zip(truth, truth[1:]):
        middle = int((end + start) / 2 * RATE)
        burst = np.cumsum(rng.standard_normal(RATE // 4)).astype(np.float32)
        burst -= burst.mean()
        bursts[middle:middle + len(burst)] += burst / rms(burst) * speech_rms / 10 ** (10 / 20)
    out["breaths in the pauses, 10 dB below"] = bursts
    out["breaths + pink noise 20 dB"] = bursts + pink(len(clean), rng) * speech_rms / 10
    return out


def kiroku_vad(binary, wav, detector):
    out = subprocess.run([binary, wav, "en", detector], check=True, capture_output=True, text=True).stdout
    return [(u["start_ms"] / 1000, u["end_ms"] / 1000) for u in map(json.loads, out.splitlines())]


def silero_vad(session, samples):
    """Utterances (start, closed at) with the energy VAD's closing rule on Silero's
    probabilities (faster-whisper's thresholds and input layout: 64 samples of context
    before each 512-sample window)."""
    window, context = 512, 64
    n = len(samples) // window
    frames = samples[: n * window].reshape(n, window)
    before = np.concatenate([np.zeros((1, context), np.float32), frames[:-1, -context:]])
    batch = np.concatenate([before, frames], axis=1).astype(np.float32)
    h = np.zeros((1, 1, 128), np.float32)
    c = np.zeros((1, 1, 128), np.float32)
    probs, _, _ = session.run(None, {"input": batch, "h": h, "c": c})
    probs = np.asarray(probs).reshape(-1)
    step = window / RATE
    utterances, start, speech, silence = [], None, 0.0, 0.0
    for i, p in enumerate(probs):
        t = (i + 1) * step
        if start is None:
            if p >= 0.5:
                start, speech, silence = t - step, step, 0.0
        elif p >= 0.35:
            speech += step if p >= 0.5 else 0
            silence = 0.0
        else:
            silence += step
            if silence >= FINALIZE_S:
                if speech >= MIN_SPEECH_S:
                    utterances.append((start, t))
                start = None
    if start is not None and speech >= MIN_SPEECH_S:
        utterances.append((start, len(samples) / RATE))
    return utterances


def score(utterances, truth):
    ends = [e for _, e in utterances]
    delays, found = [], 0
    for _, end in truth:
        later = [e - end for e in ends if end <= e <= end + 2.0]
        if later:
            found += 1
            delays.append(min(later))
    inside = sum(1 for e in ends for s, t in truth if s + 0.2 < e - FINALIZE_S < t - 0.2)
    noise = sum(1 for s, e in utterances if not any(s < te and e - FINALIZE_S > ts for ts, te in truth))
    delays.sort()
    pct = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")
    return found, pct(0.5), pct(0.95), inside, noise


def main():
    binary, onnx, work = sys.argv[1], sys.argv[2], sys.argv[3]
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
    os.makedirs(work, exist_ok=True)
    clean, truth = meeting(work)
    print(f"{len(truth)} turns, {len(clean) / RATE:.0f} s (tests/support/long_meeting.txt, three espeak-ng voices)")
    print("| condition | VAD | turn ends found | end delay p50 / p95 | ends inside a turn | noise utterances |")
    print("|---|---|---|---|---|---|")
    for name, samples in conditions(clean, truth, work).items():
        wav = os.path.join(work, name.split(",")[0].replace(" ", "-") + f"-{abs(hash(name)) % 1000}.wav")
        write_wav(wav, samples)
        for vad, utterances in (("energy", kiroku_vad(binary, wav, "energy")),
                                ("Silero v6 (Kiroku: tract, in the worker)", kiroku_vad(binary, wav, "silero")),
                                ("Silero v6 (onnxruntime, reference)", silero_vad(session, samples))):
            found, p50, p95, inside, noise = score(utterances, truth)
            print(f"| {name} | {vad} | {found}/{len(truth)} | {p50:.2f} / {p95:.2f} s | {inside} | {noise} |")


if __name__ == "__main__":
    main()
