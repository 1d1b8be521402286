"""Creates an explicit agent dispatch through the real AgentDispatch API
(livekit-api), as a backend would: `dispatch.py URL KEY SECRET ROOM AGENT_NAME`.

Prints {"event": "dispatched", "id": ..., "room": ..., "agent_name": ...} on
success, {"event": "error", "message": ...} and exit 1 on failure.
"""

import asyncio
import json
import sys

from livekit import api


async def main():
    url, key, secret, room, agent_name = sys.argv[1:6]
    url = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    lkapi = api.LiveKitAPI(url, key, secret)
    try:
        d = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata="e2e")
        )
        listed = await lkapi.agent_dispatch.list_dispatch(room_name=room)
        print(json.dumps({"event": "dispatched", "id": d.id, "room": d.room,
                          "agent_name": d.agent_name, "listed": [x.id for x in listed]}))
    finally:
        await lkapi.aclose()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:
        print(json.dumps({"event": "error", "message": repr(e)}))
        sys.exit(1)
