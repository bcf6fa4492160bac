"""Validates SRT and WebVTT files with real parsers (PyPI `srt`, `webvtt-py`).

Usage: check_captions.py FILE.srt FILE.vtt  (exit 1 with the parser's complaint)
"""
import sys

import srt
import webvtt


def main(srt_path: str, vtt_path: str) -> None:
    with open(srt_path, encoding="utf-8") as f:
        cues = list(srt.parse(f.read(), ignore_errors=False))
    assert cues, "no SRT cues"
    for cue in cues:
        assert cue.end > cue.start, f"SRT cue {cue.index} ends before it starts"
    vtt = webvtt.read(vtt_path)
    assert len(vtt.captions) == len(cues), "SRT and WebVTT disagree on cue count"
    for caption in vtt.captions:
        assert caption.end_in_seconds > caption.start_in_seconds
        assert caption.text.strip(), "empty WebVTT cue"


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
