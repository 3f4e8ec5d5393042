"""sink.py — the downstream SMTP server both servers relay to in the benchmark: accepts
everything on 127.0.0.1:PORT (no TLS), counts messages, and reports the count and the
time of the last one when asked on its control line (stdin: "count" → "N T")."""

import asyncio
import sys
import time

count = 0
last_at = 0.0


async def session(reader, writer):
    global count, last_at
    writer.write(b"220 sink ESMTP\r\n")
    in_data = False
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    count += 1
                    last_at = time.monotonic()
                    writer.write(b"250 2.0.0 ok\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                in_data = True
                writer.write(b"354 go\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    writer.close()


async def control():
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            loop.stop()
            return
        print(f"{count} {last_at:.6f}", flush=True)


async def main(port):
    server = await asyncio.start_server(session, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await control()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1])))
    except RuntimeError:
        pass
