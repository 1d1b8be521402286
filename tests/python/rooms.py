"""Many users, one process: joins several rooms with the real LiveKit Python
SDK (no media) and reports who comes and goes, one JSON object per line:

  {"event": "ready", "room": R}
  {"event": "participant", "room": R, "identity": I}
  {"event": "participant_left", "room": R, "identity": I}
  {"event": "error", "room": R, "message": M}
  {"event": "done"}

Usage: rooms.py --url URL --join ROOM=TOKEN [--join ROOM=TOKEN ...] --duration S
"""

import argparse
import asyncio
import json
import sys

from livekit import rtc


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def join(url, name, token):
    room = rtc.Room()
    room.on("participant_connected",
            lambda p: out({"event": "participant", "room": name, "identity": p.identity}))
    room.on("participant_disconnected",
            lambda p: out({"event": "participant_left", "room": name, "identity": p.identity}))
    try:
        await room.connect(url, token)
    except Exception as e:
        out({"event": "error", "room": name, "message": repr(e)})
        return None
    out({"event": "ready", "room": name})
    for p in room.remote_participants.values():
        out({"event": "participant", "room": name, "identity": p.identity})
    return room


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--join", action="append", default=[])
    ap.add_argument("--duration", type=float, default=30.0)
    args = ap.parse_args()
    pairs = [j.split("=", 1) for j in args.join]
    rooms = await asyncio.gather(*(join(args.url, n, t) for n, t in pairs))
    await asyncio.sleep(args.duration)
    for r in rooms:
        if r is not None:
            await r.disconnect()
    out({"event": "done"})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        out({"event": "error", "room": "", "message": repr(e)})
        sys.exit(1)
