"""The human side of the end-to-end tests: a real LiveKit Python SDK participant.

Prints one JSON object per line on stdout for the Rust test to read:
  {"event": "ready", "identity": ...}
  {"event": "participant", "identity": ..., "attributes": {...}}
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
  --duration S           exit after S seconds in total
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
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()

    room = rtc.Room()
    remote_present = asyncio.Event()
    tasks = []

    def on_participant(p):
        out({"event": "participant", "identity": p.identity, "attributes": dict(p.attributes)})
        remote_present.set()

    room.on("participant_connected", on_participant)

    def on_attrs(changed, participant):
        out({"event": "attributes", "identity": participant.identity,
             "attributes": dict(participant.attributes)})

    room.on("participant_attributes_changed", on_attrs)

    recording_started = False

    async def record(track, participant):
        stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
        chunks = []
        loop = asyncio.get_running_loop()
        end = loop.time() + args.record_seconds
        try:
            async for ev in stream:
                chunks.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())
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

    async def publish():
        await asyncio.wait_for(remote_present.wait(), timeout=args.duration)
        with wave.open(args.publish_wav, "rb") as w:
            rate = w.getframerate()
            channels = w.getnchannels()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if channels > 1:
            pcm = pcm.reshape(-1, channels)[:, 0].copy()
        source = rtc.AudioSource(rate, 1)
        track = rtc.LocalAudioTrack.create_audio_track("mic", source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, opts)
        out({"event": "published", "sample_rate": rate, "samples": int(pcm.size)})
        await asyncio.sleep(args.publish_delay)
        step = rate // 100  # 10 ms frames
        for i in range(0, pcm.size, step):
            chunk = pcm[i:i + step]
            if chunk.size < step:
                chunk = np.concatenate([chunk, np.zeros(step - chunk.size, dtype=np.int16)])
            frame = rtc.AudioFrame(chunk.tobytes(), rate, 1, step)
            await source.capture_frame(frame)
        await source.wait_for_playout()
        out({"event": "played"})

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
