"""Read back what a NATS JetStream server stored for vistream (for demos and checks).

python -m engine.publish.stream nats://127.0.0.1:4222          # counts per subject
python -m engine.publish.stream nats://127.0.0.1:4222 --print  # every event, one per line
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from typing import Any

from engine.publish.nats import STREAM_NAME


async def read_stream(url: str, stream: str = STREAM_NAME) -> list[tuple[str, dict[str, Any]]]:
    """Every message of the stream as (subject, event), in stream order."""
    import nats

    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            messages.append((str(message.subject), json.loads(message.data or b"{}")))
        return messages
    finally:
        await connection.close()


def main() -> None:
    """Print counts per subject (and duplicates by event id), or every event."""
    parser = argparse.ArgumentParser(description="What a NATS JetStream server stored for vistream.")
    parser.add_argument("url", help="nats://HOST:PORT")
    parser.add_argument("--print", action="store_true", help="print every event as JSON")
    args = parser.parse_args()
    messages = asyncio.run(read_stream(args.url))
    if args.print:
        for _, event in messages:
            print(json.dumps(event, separators=(",", ":")))
        return
    for subject, count in sorted(Counter(subject for subject, _ in messages).items()):
        print(f"{subject}: {count}")
    ids = [event.get("id") for _, event in messages]
    print(f"{len(messages)} events in {STREAM_NAME}, {len(ids) - len(set(ids))} duplicate ids")


if __name__ == "__main__":
    main()
