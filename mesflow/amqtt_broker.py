"""Run the pure-Python amqtt broker: the fallback when mosquitto is not installed.

amqtt speaks MQTT 3.1.1 only (no MQTT 5, no shared subscriptions), which is all the
demo needs. `python -m mesflow.amqtt_broker --port 1883`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def _serve(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
