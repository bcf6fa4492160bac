#!/usr/bin/env bash
# make demo: the whole cluster on this machine, a two-voice meeting streamed to it in
# real time, live captions on the terminal, then a clean stop.
#   usage: deploy/demo/demo.sh path/to/kiroku
set -euo pipefail
KIROKU=${1:?usage: demo.sh KIROKU_BINARY}
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${DEMO_DIR:-build/demo}
RUN=${KIROKU_RUN_DIR:-.run}
mkdir -p "$OUT" "$RUN"

# 1. The meeting audio: each line with its speaker's voice, 0.7 s pauses between lines.
parts=()
n=0
while IFS='|' read -r speaker line; do
  [[ -z "$speaker" || "$speaker" == \#* ]] && continue
  voice=en-us; [[ "$speaker" == B ]] && voice=en-gb
  n=$((n + 1))
  espeak-ng -v "$voice" -s 150 -w "$OUT/line$n.raw.wav" "$line"
  sox "$OUT/line$n.raw.wav" -r 16000 -c 1 -b 16 "$OUT/line$n.wav" pad 0 0.7
  parts+=("$OUT/line$n.wav")
done < "$HERE/meeting.txt"
sox "${parts[@]}" "$OUT/meeting.wav"
echo "demo meeting: $OUT/meeting.wav ($(soxi -d "$OUT/meeting.wav"), two voices)"

# 2. The cluster (NATS reused or started under $RUN).
"$KIROKU" up --run-dir "$RUN" > "$OUT/up.log" 2>&1 &
UP=$!
cleanup() { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  grep -q "kiroku up: kiroku gateway" "$OUT/up.log" 2>/dev/null && break
  if ! kill -0 "$UP" 2>/dev/null; then cat "$OUT/up.log"; exit 1; fi
  sleep 0.2
done
sed -n '1,5p' "$OUT/up.log"


# 3. Live captions: interims rewrite the line in place, finals stay.
echo "--- live captions ---"
"$KIROKU" stream "$OUT/meeting.wav" --stats
echo "--- stopping the cluster ---"
cleanup
trap - EXIT
tail -1 "$OUT/up.log"
