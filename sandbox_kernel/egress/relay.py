"""Inside the sandbox: ``python3 -I egress-relay.py SOCKET PORT -- AGENT...``.

Listens on 127.0.0.1:PORT (the sandbox's own loopback), then forks: the parent execs the agent
(same pid, same stdin/stdout), the child carries every TCP connection to the egress proxy's Unix
socket, byte for byte. The listener exists before the agent runs, so the first cell finds it.
The relay decides nothing: the proxy on the host does. It ends with the sandbox (PID namespace).
Standard library only; the sandbox's python3 runs it.
"""

import asyncio
import os
import socket
import sys


async def _pipe(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 18)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


async def _handle(path, client_reader, client_writer):
    try:
        up_reader, up_writer = await asyncio.open_unix_connection(path)
    except OSError:
        msg = b"egress proxy unavailable"
        client_writer.write(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(msg), msg)
        )
        client_writer.close()
        return
    await asyncio.gather(_pipe(client_reader, up_writer), _pipe(up_reader, client_writer))
    for w in (client_writer, up_writer):
        w.close()


async def _serve(listener, path):
    server = await asyncio.start_server(lambda r, w: _handle(path, r, w), sock=listener)
    async with server:
        await server.serve_forever()


def main():
    path, port = sys.argv[1], int(sys.argv[2])
    agent = sys.argv[sys.argv.index("--") + 1 :]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    if os.fork() == 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        asyncio.run(_serve(listener, path))
        os._exit(0)
    listener.close()
    os.execv(agent[0], agent)


if __name__ == "__main__":
    main()
