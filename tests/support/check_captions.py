"""Validates SRT and WebVTT files with real parsers (PyPI `srt`, `webvtt-py`).

Usage: check_captions.py FILE.srt FILE.vtt [--cues OUT.json]

Exits 1 with the parser's complaint, or when the two files disagree on their cues
(times to the millisecond, text lines after WebVTT unescaping). With --cues, writes the
cues as the parsers read them, for the caller's own checks: a JSON list of
{"start_ms", "end_ms", "lines"}.
"""
import argparse
import datetime
import html
import json

import srt
import webvtt


def milliseconds(delta: datetime.timedelta) -> int:
    return delta // datetime.timedelta(milliseconds=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("srt_path")
    parser.add_argument("vtt_path")
    parser.add_argument("--cues", help="write the parsed cues here as JSON")
    args = parser.parse_args()

    with open(args.srt_path, encoding="utf-8") as f:
        cues = list(srt.parse(f.read(), ignore_errors=False))
    assert cues, "no SRT cues"
    for cue in cues:
        assert cue.end > cue.start, f"SRT cue {cue.index} ends before it starts"
    vtt = webvtt.read(args.vtt_path)
    assert len(vtt.captions) == len(cues), "SRT and WebVTT disagree on cue count"
    for caption in vtt.captions:
        # Timestamps, not *_in_seconds: those are whole seconds in webvtt-py 0.6.
        assert caption.end_time > caption.start_time, f"WebVTT cue {caption} ends first"
        assert caption.text.strip(), "empty WebVTT cue"

    parsed = []
    for cue, caption in zip(cues, vtt.captions):
        start_ms, end_ms = milliseconds(cue.start), milliseconds(cue.end)
        times = (caption.start_time.in_milliseconds(), caption.end_time.in_milliseconds())
        assert times == (start_ms, end_ms), f"cue {cue.index}: SRT and WebVTT times differ"
        lines = cue.content.split("\n")
        vtt_lines = [html.unescape(line) for line in caption.lines]
        assert vtt_lines == lines, f"cue {cue.index}: {lines} in SRT, {vtt_lines} in WebVTT"
        parsed.append({"start_ms": start_ms, "end_ms": end_ms, "lines": lines})
    if args.cues:
        with open(args.cues, "w", encoding="utf-8") as f:
            json.dump(parsed, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
