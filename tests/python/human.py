"""The human side of the end-to-end tests: a real LiveKit Python SDK participant.

Prints one JSON object per line on stdout for the Rust test to read:
  {"event": "ready", "identity": ...}
  {"event": "participant", "identity": ..., "attributes": {...}}
  {"event": "participant_left", "identity": ...}
  {"event": "attributes", "identity": ..., "attributes": {...}}
  {"event": "track", "identity": ..., "sid": ...}
  {"event": "recorded", "path": ..., "samples": N, "sample_rate": R}
  {"event": "text", "identity": ..., "topic": ..., "attributes": {...}, "text": ...}
  {"event": "published"} / {"event": "played"} / {"event": "sent_text", "bytes": N}
  {"event": "error", "message": ...}
  {"event": "done"}

Options (all optional, combined freely):
  --publish-wav PATH     publish PATH (mono 16-bit WAV) as a microphone track, once a
                         remote participant is present (after --publish-delay seconds)
  --record-wav PATH      record the first subscribed remote audio track to PATH (48 kHz mono)
  --record-seconds S     how long to record after the track arrives
  --text-topic TOPIC     print text streams received on TOPIC
  --send-text-file PATH  send the UTF-8 content of PATH as a text stream (topic from
                         --send-topic, attributes from --send-attrs JSON) once a remote
                         participant is present
  --barge-wav PATH       speak PATH over the agent: --barge-after seconds after the
                         first voiced audio of the recorded track (needs --record-wav)
  --barge-after S        (default 1.5)
  --duration S           exit after S seconds in total

Timing events (loop clock, seconds) for barge-in measurements:
  {"event": "record_start", "t": T}  the first recorded frame
  {"event": "agent_audio", "t": T}   the first voiced recorded frame
  {"event": "barge", "t": T}         the first frame of --barge-wav is captured
"""

import argparse
import asyncio
import json
import sys
import wave

import numpy as np
from livekit import rtc


def out(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--publish-wav")
    ap.add_argument("--publish-delay", type=float, default=1.0)
    ap.add_argument("--record-wav")
    ap.add_argument("--record-seconds", type=float, default=5.0)
    ap.add_argument("--text-topic")
    ap.add_argument("--send-text-file")
    ap.add_argument("--send-topic", default="lk.transcription")
    ap.add_argument("--send-attrs", default="{}")
    ap.add_argument("--barge-wav")
    ap.add_argument("--barge-after", type=float, default=1.5)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()

    room = rtc.Room()
    remote_present = asyncio.Event()
    tasks = []

    def on_participant(p):
        out({"event": "participant", "identity": p.identity, "attributes": dict(p.attributes)})
        remote_present.set()

    room.on("participant_connected", on_participant)
    room.on("participant_disconnected",
            lambda p: out({"event": "participant_left", "identity": p.identity}))

    def on_attrs(changed, participant):
        out({"event": "attributes", "identity": participant.identity,
             "attributes": dict(participant.attributes)})

    room.on("participant_attributes_changed", on_attrs)

    recording_started = False
    agent_voiced = asyncio.Event()
    mic = {}  # "source": the published microphone, once published

    async def record(track, participant):
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        chunks = []
        loop = asyncio.get_running_loop()
        end = loop.time() + args.record_seconds
        try:
            async for ev in stream:
                pcm = np.frombuffer(ev.frame.data, dtype=np.int16).copy()
                if not chunks:
                    out({"event": "record_start", "t": loop.time()})
                if not agent_voiced.is_set() and pcm.size and np.abs(pcm.astype(np.int32)).mean() > 300:
                    out({"event": "agent_audio", "t": loop.time()})
                    agent_voiced.set()
                chunks.append(pcm)
                if loop.time() >= end:
                    break
        finally:
            await stream.aclose()
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        with wave.open(args.record_wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(48000)
            w.writeframes(pcm.tobytes())
        out({"event": "recorded", "path": args.record_wav, "samples": int(pcm.size), "sample_rate": 48000})

    def on_track(track, publication, participant):
        nonlocal recording_started
        out({"event": "track", "identity": participant.identity, "sid": publication.sid})
        if args.record_wav and not recording_started and track.kind == rtc.TrackKind.KIND_AUDIO:
            recording_started = True
            tasks.append(asyncio.ensure_future(record(track, participant)))

    room.on("track_subscribed", on_track)

    if args.text_topic:
        def on_text(reader, participant_identity):
            async def read():
                text = await reader.read_all()
                out({"event": "text", "identity": participant_identity, "topic": reader.info.topic,
                     "attributes": dict(reader.info.attributes or {}), "text": text})
            tasks.append(asyncio.ensure_future(read()))
        room.register_text_stream_handler(args.text_topic, on_text)

    await room.connect(args.url, args.token)
    out({"event": "ready", "identity": room.local_participant.identity})
    for p in room.remote_participants.values():
        on_participant(p)

    def read_wav(path):
        with wave.open(path, "rb") as w:
            rate = w.getframerate()
            channels = w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if channels > 1:
            pcm = pcm.reshape(-1, channels)[:, 0].copy()
        return rate, pcm

    async def speak(source, rate, pcm, first_frame_event=None):
        step = rate // 100  # 10 ms frames
        for i in range(0, pcm.size, step):
            chunk = pcm[i:i + step]
            if chunk.size < step:
                chunk = np.concatenate([chunk, np.zeros(step - chunk.size, dtype=np.int16)])
            frame = rtc.AudioFrame(chunk.tobytes(), rate, 1, step)
            await source.capture_frame(frame)
            if i == 0 and first_frame_event:
                out({"event": first_frame_event, "t": asyncio.get_running_loop().time()})
        await source.wait_for_playout()

    async def publish():
        await asyncio.wait_for(remote_present.wait(), timeout=args.duration)
        rate, pcm = read_wav(args.publish_wav)
        source = rtc.AudioSource(rate, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, opts)
        mic["source"] = (source, rate)
        out({"event": "published", "sample_rate": rate, "samples": int(pcm.size)})
        await asyncio.sleep(args.publish_delay)
        await speak(source, rate, pcm)
        out({"event": "played"})

    async def barge():
        await asyncio.wait_for(agent_voiced.wait(), timeout=args.duration)
        await asyncio.sleep(args.barge_after)
        source, rate = mic["source"]
        brate, pcm = read_wav(args.barge_wav)
        if brate != rate:
            raise ValueError(f"--barge-wav rate {brate} differs from --publish-wav rate {rate}")
        await speak(source, rate, pcm, first_frame_event="barge")
        out({"event": "barged"})

    async def send_text():
        await asyncio.wait_for(remote_present.wait(), timeout=args.duration)
        await asyncio.sleep(0.5)
        with open(args.send_text_file, encoding="utf-8") as f:
            text = f.read()
        attrs = json.loads(args.send_attrs)
        await room.local_participant.send_text(text, topic=args.send_topic, attributes=attrs)
        out({"event": "sent_text", "bytes": len(text.encode("utf-8"))})

    if args.publish_wav:
        tasks.append(asyncio.ensure_future(publish()))
    if args.send_text_file:
        tasks.append(asyncio.ensure_future(send_text()))
    if args.barge_wav:
        tasks.append(asyncio.ensure_future(barge()))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.duration
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        for t in tasks:
            if t.done() and t.exception() is not None:
                out({"event": "error", "message": repr(t.exception())})
                tasks.remove(t)
                break
    # Report the final attributes of everyone.
    for p in room.remote_participants.values():
        out({"event": "participant", "identity": p.identity, "attributes": dict(p.attributes)})
    await room.disconnect()
    out({"event": "done"})


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # report, never hang the Rust side
        out({"event": "error", "message": repr(e)})
        sys.exit(1)
