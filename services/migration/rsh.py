"""The remote shell of the sending rsync (``rsync -e``): its stdin/stdout to a unix socket.

LXD runs ``lxd netcat <socket>`` here. OpenBSD ``nc -N -U`` would do the copying but does
not exit when the socket ends while its stdin is open, and rsync waits for its remote shell
to exit before it does: a deadlock. This exits as soon as the socket ends (the migration
service closes it once the peer's rsync is done). Standard library only; run with
``python -I``; the arguments rsync appends (``localhost rsync --server ...``) are ignored.
"""

import os
import socket
import sys
import threading


def main() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])

    def upstream() -> None:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            sock.sendall(data)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = sock.recv(65536)
        if not data:
            break
        os.write(1, data)
    os._exit(0)


if __name__ == "__main__":
    main()
