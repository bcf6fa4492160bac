"""A real SMTP server (aiosmtpd) for the notice tests: every message it accepts is
written to OUT_DIR as NNNN.eml (the raw message) and NNNN.json (envelope and the
headers/body as Python's email parser reads them, RFC 2047 words decoded).

usage: sink.py PORT OUT_DIR   (prints "ready" once it accepts connections)
"""

import asyncio
import json
import pathlib
import sys
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, out: pathlib.Path):
        self.out = out
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        stem = self.out / f"{self.count:04d}"
        raw = envelope.original_content or envelope.content
        stem.with_suffix(".eml").write_bytes(raw)
        parsed = message_from_bytes(raw, policy=policy.default)
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": [[k, str(v)] for k, v in parsed.items()],
            "body": parsed.get_body(preferencelist=("plain",)).get_content(),
        }
        # The .json appears last and atomically: its presence means the mail is complete.
        tmp = stem.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False))
        tmp.rename(stem.with_suffix(".json"))
        return "250 Message accepted for delivery"


def main() -> None:
    port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    controller = Controller(Handler(out), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
