"""Many users, one process: joins several rooms with the real LiveKit Python
SDK (no media) and reports who comes and goes, one JSON object per line:

  {"event": "ready", "room": R}
  {"event": "participant", "room": R, "identity": I}
  {"event": "participant_left", "room": R, "identity": I}
  {"event": "error", "room": R, "message": M}
  {"event": "done"}

  {"event": "spoke", "room": R, "turn": K}   (with --publish-wav)

Usage: rooms.py --url URL --join ROOM=TOKEN [--join ROOM=TOKEN ...] --duration S
                [--publish-wav PATH --turns K --gap S]

With --publish-wav each user, once an agent is in its room, speaks PATH
(mono 16-bit) --turns times, --gap seconds apart (start to start), starting
at a random offset within the first gap so rooms do not speak in lockstep.
Users subscribe to nothing: the agent's audio is not decoded here.
"""

import argparse
import asyncio
import json
import random
import sys
import wave

import numpy as np

from livekit import rtc


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def speak(room, name, pcm, rate, agent_here, turns, gap):
    await agent_here.wait()
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("mic", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, opts)
    await asyncio.sleep(1.0 + random.uniform(0, gap))
    step = rate // 50  # 20 ms frames
    loop = asyncio.get_running_loop()
    for k in range(turns):
        started = loop.time()
        # The source plays out in real time from the first frame (after a 1 s queue
        # fills): a frame handed over after its time leaves a gap in the question.
        # The worst lateness tells whether this user, not the agent, split it.
        late = 0.0
        for n, i in enumerate(range(0, pcm.size, step)):
            chunk = pcm[i:i + step]
            if chunk.size < step:
                chunk = np.concatenate([chunk, np.zeros(step - chunk.size, dtype=np.int16)])
            late = max(late, loop.time() - started - n * 0.02)
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, step))
        await source.wait_for_playout()
        out({"event": "spoke", "room": name, "turn": k, "late_ms": round(late * 1000.0, 1)})
        await asyncio.sleep(max(0.0, started + gap - loop.time()))


async def join(url, name, token, speech):
    room = rtc.Room()
    agent_here = asyncio.Event()

    def joined(p):
        out({"event": "participant", "room": name, "identity": p.identity})
        if p.identity.startswith("agent-"):
            agent_here.set()

    room.on("participant_connected", joined)
    room.on("participant_disconnected",
            lambda p: out({"event": "participant_left", "room": name, "identity": p.identity}))
    try:
        await room.connect(url, token, rtc.RoomOptions(auto_subscribe=False))
    except Exception as e:
        out({"event": "error", "room": name, "message": repr(e)})
        return None, None
    out({"event": "ready", "room": name})
    for p in room.remote_participants.values():
        joined(p)
    task = None
    if speech is not None:
        pcm, rate, turns, gap = speech
        task = asyncio.ensure_future(speak(room, name, pcm, rate, agent_here, turns, gap))
    return room, task


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--join", action="append", default=[])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--publish-wav")
    ap.add_argument("--turns", type=int, default=1)
    ap.add_argument("--gap", type=float, default=8.0)
    args = ap.parse_args()
    speech = None
    if args.publish_wav:
        with wave.open(args.publish_wav, "rb") as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        speech = (pcm, rate, args.turns, args.gap)
    pairs = [j.split("=", 1) for j in args.join]
    joined = await asyncio.gather(*(join(args.url, n, t, speech) for n, t in pairs))
    await asyncio.sleep(args.duration)
    for room, task in joined:
        if task is not None:
            if task.done() and task.exception() is not None:
                out({"event": "error", "room": "", "message": repr(task.exception())})
            task.cancel()
        if room is not None:
            await room.disconnect()
    out({"event": "done"})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        out({"event": "error", "room": "", "message": repr(e)})
        sys.exit(1)
