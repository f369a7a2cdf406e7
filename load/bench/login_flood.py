"""Waves of concurrent bogus sign-ins against Blaze, for a bounded time:
each wave opens CONCURRENCY connections at once, each sends one request
and reads the answer; the next wave starts when the last answer is in.
Prints one JSON line of counts.

    python3 login_flood.py URL EMAIL CONCURRENCY SECONDS [MODE]

MODE `password` (default): POST /auth/token with a wrong password (each
asks for a password hash). MODE `refresh`: POST /auth/refresh with a
garbage token, the same flood with no hash behind it (the reference).
"""

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def sign_in(host, port, email, index, counts, mode):
    if mode == "refresh":
        path, body = "/auth/refresh", json.dumps({"refresh_token": f"not.a.token{index}"}).encode()
    else:
        path, body = "/auth/token", json.dumps({"email": email, "password": f"not the password {index}"}).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        status = answer.split(b" ", 2)[1].decode() if answer else "none"
    except (OSError, asyncio.TimeoutError):
        status = "error"
    counts[status] = counts.get(status, 0) + 1


async def main(url, email, concurrency, seconds, mode):
    parts = urlsplit(url)
    counts, waves = {}, 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and waves < 10_000:
        await asyncio.gather(
            *(sign_in(parts.hostname, parts.port, email, index, counts, mode) for index in range(concurrency))
        )
        waves += 1
    print(json.dumps({"mode": mode, "waves": waves, "concurrency": concurrency, "statuses": counts}))


if __name__ == "__main__":
    url, email, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "password"
    if not 1 <= concurrency <= 5000 or not 0 < seconds <= 600 or mode not in ("password", "refresh"):
        sys.exit("CONCURRENCY must be 1..5000, SECONDS 0..600, MODE password or refresh")
    asyncio.run(main(url, email, concurrency, seconds, mode))
