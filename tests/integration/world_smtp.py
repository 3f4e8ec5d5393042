"""world_smtp.py — scripted SMTP servers on loopback addresses, for the relay tests.

    with SmtpWorld(certdir) as w:
        p = w.peer("accept", starttls=True)          # listens on 127.A.B.n:25
        w.peer("greylist"); w.peer("421"); w.peer("tarpit")
        w.unused_addr()                              # an address where nothing listens
        ... p.addr, p.messages (envelope + data), p.sessions (what each session did)

Each world takes a random 127.A.B.0/24 so that tests running in parallel never share
an address. Behaviours:
  accept            250 to everything (records each message)
  421               "421" at connect, then close
  greylist          451 4.7.1 for the first attempt of each (sender, recipient), then accept
  reject_rcpt       550 5.1.1 for the recipients in reject=..., 250 for the others
  552_data          552 5.3.4 at the end of data
  drop_after_data   reads the whole message, then closes without a reply
  tarpit            accepts the connection and never says anything
  hold_data         like accept, but answers the end of data only after release()
  one_per_session   like accept, but a second MAIL on a connection closes it unanswered
Options: ehlo=False (502 to EHLO: HELO only), auth_mechs ("PLAIN LOGIN"),
starttls (offer STARTTLS with a self-signed certificate), broken_tls (offer it,
answer 220, then break the handshake), implicit_tls, auth=(user, password) (AUTH PLAIN
and LOGIN required before MAIL, only after TLS), size=N (advertise SIZE N),
pipelining (default True).
Standard library only; binding port 25 needs root.
"""

import base64
import os
import random
import socket
import ssl
import threading

import harness


class Peer:
    def __init__(self, world, addr, behaviour, port=25, starttls=False, broken_tls=False,
                 implicit_tls=False, auth=None, size=None, pipelining=True, reject=(),
                 ehlo=True, auth_mechs="PLAIN LOGIN"):
        self.world = world
        self.addr = addr
        self.port = port
        self.behaviour = behaviour
        self.starttls = starttls or broken_tls
        self.broken_tls = broken_tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.size = size
        self.pipelining = pipelining
        self.ehlo = ehlo
        self.auth_mechs = auth_mechs
        self.reject = {r.lower() for r in reject}
        self.messages = []      # {"mail_from", "rcpts", "data", "tls", "auth"}
        self.sessions = []      # per connection: {"tls": bool, "commands": [...]}
        self.greylisted = set()
        self.released = threading.Event()
        self.data_received = threading.Event()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    # ---- serving ----
    def _accept_loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self.lock:
                self.threads.append(t)
            t.start()

    def _serve(self, conn):
        session = {"tls": False, "commands": [], "first_packet": None}
        with self.lock:
            self.sessions.append(session)
        conn.settimeout(0.2)
        io = _Io(conn, self.stop)
        try:
            self._dialogue(io, session)
        except (OSError, ssl.SSLError, _Closed):
            pass
        finally:
            try:
                io.sock.close()
            except OSError:
                pass

    def _dialogue(self, io, session):
        if self.behaviour == "tarpit":
            while not self.stop.is_set():
                self.stop.wait(0.2)
            return
        if self.implicit_tls:
            io.wrap(self.world.server_context())
            session["tls"] = True
        if self.behaviour == "421":
            io.send("421 4.3.2 mx busy, try later")
            return
        io.send(f"220 {self.addr} ESMTP test peer")
        mail_from, rcpts, authed = None, [], False
        while not self.stop.is_set():
            line = io.line()
            if line is None:
                return
            if session["first_packet"] is None:
                session["first_packet"] = io.last_packet
            session["commands"].append(line if not line.upper().startswith("AUTH") else "AUTH")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO" and not self.ehlo:
                io.send("502 5.5.2 EHLO not implemented here")
            elif verb == "EHLO":
                caps = ["PIPELINING"] if self.pipelining else []
                caps += ["8BITMIME", "ENHANCEDSTATUSCODES"]
                if self.size:
                    caps.append(f"SIZE {self.size}")
                if self.starttls and not session["tls"]:
                    caps.append("STARTTLS")
                if self.auth and session["tls"]:
                    caps.append(f"AUTH {self.auth_mechs}")
                lines = [f"{self.addr} hello"] + caps
                io.send("\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}"
                                    for i, t in enumerate(lines)))
            elif verb == "HELO":
                io.send(f"250 {self.addr}")
            elif verb == "STARTTLS" and self.starttls and not session["tls"]:
                io.send("220 2.0.0 ready to start TLS")
                if self.broken_tls:
                    io.raw(b"\x15\x03\x03\x00\x02\x02\x28")  # a fatal alert, not a ServerHello
                    return
                io.wrap(self.world.server_context())
                session["tls"] = True
            elif verb == "AUTH" and self.auth:
                authed = self._auth(io, line)
            elif verb == "MAIL":
                if self.auth and not authed:
                    io.send("530 5.7.0 authentication required")
                    continue
                if self.behaviour == "one_per_session" and session.get("delivered"):
                    return
                mail_from, rcpts = _addr(line), []
                io.send("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpt = _addr(line)
                if mail_from is None:
                    io.send("503 5.5.1 MAIL first")
                elif rcpt.lower() in self.reject:
                    io.send(f"550 5.1.1 <{rcpt}>: no such user here")
                elif self.behaviour == "greylist" and (mail_from, rcpt) not in self.greylisted:
                    with self.lock:
                        self.greylisted.add((mail_from, rcpt))
                    io.send("451 4.7.1 greylisted, come back later")
                else:
                    rcpts.append(rcpt)
                    io.send("250 2.1.5 ok")
            elif verb == "DATA":
                if not rcpts:
                    io.send("554 5.5.1 no valid recipients")
                    continue
                io.send("354 go ahead")
                if self.behaviour == "late_reader":
                    # the sender's socket fills up before a byte of content is read
                    if self.stop.wait(0.5):
                        return
                data = io.data()
                self.data_received.set()
                if self.behaviour == "hold_data":
                    while not self.released.is_set():
                        if self.stop.wait(0.05):
                            return
                if self.behaviour == "drop_after_data":
                    return
                if self.behaviour == "552_data":
                    io.send("552 5.3.4 message too big for this mailbox")
                else:
                    with self.lock:
                        self.messages.append({"mail_from": mail_from, "rcpts": list(rcpts),
                                              "data": data, "tls": session["tls"],
                                              "auth": authed})
                    session["delivered"] = True
                    io.send("250 2.0.0 queued here")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                io.send("250 2.0.0 ok")
            elif verb == "NOOP":
                io.send("250 2.0.0 ok")
            elif verb == "QUIT":
                io.send("221 2.0.0 bye")
                return
            else:
                io.send("502 5.5.2 not implemented")

    def _auth(self, io, line):
        parts = line.split()
        mech = parts[1].upper() if len(parts) > 1 else ""
        user, password = self.auth
        if mech not in self.auth_mechs.split():
            io.send("504 5.5.4 mechanism not offered")
            return False
        if mech == "PLAIN":
            resp = parts[2] if len(parts) > 2 else (io.send("334 ") or io.line())
            try:
                _, u, p = base64.b64decode(resp).split(b"\0")
            except ValueError:
                io.send("501 5.5.2 bad PLAIN")
                return False
        elif mech == "LOGIN":
            io.send("334 VXNlcm5hbWU6")
            u = base64.b64decode(io.line() or "")
            io.send("334 UGFzc3dvcmQ6")
            p = base64.b64decode(io.line() or "")
        else:
            io.send("504 5.5.4 unknown mechanism")
            return False
        if u.decode() == user and p.decode() == password:
            io.send("235 2.7.0 authenticated")
            return True
        io.send("535 5.7.8 authentication failed")
        return False

    def release(self):
        self.released.set()

    def close(self):
        self.stop.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.thread.join(10)
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(10)


class _Closed(Exception):
    pass


class _Io:
    def __init__(self, sock, stop):
        self.sock = sock
        self.stop = stop
        self.buf = bytearray()  # appended in place: a large message is not copied per read
        self.last_packet = b""

    def wrap(self, context):
        self.buf = bytearray()  # nothing sent before TLS is kept
        self.sock.settimeout(harness.IO_TIMEOUT)
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(0.2)

    def raw(self, data):
        self.sock.sendall(data)

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def _fill(self):
        while True:
            if self.stop.is_set():
                raise _Closed()
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                continue
            if not chunk:
                raise _Closed()
            self.last_packet = chunk
            self.buf += chunk
            return

    def line(self):
        while b"\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\n")
        line = bytes(self.buf[:end])
        del self.buf[:end + 1]
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def data(self):
        """Until CRLF.CRLF; returns the raw bytes as sent (still dot-stuffed)."""
        seen = 0  # scanned already: a large message is searched once, not per read
        while True:
            end = self.buf.find(b"\r\n.\r\n", seen)
            if end >= 0 or self.buf.startswith(b".\r\n"):
                break
            seen = max(0, len(self.buf) - 4)
            self._fill()
        if self.buf.startswith(b".\r\n"):
            data, end = b"", 3
        else:
            data, end = bytes(self.buf[:end + 2]), end + 5
        del self.buf[:end]
        return data


def _addr(line):
    start, end = line.find("<"), line.find(">")
    return line[start + 1:end] if 0 <= start < end else ""


class SmtpWorld:
    def __init__(self, certdir):
        if os.geteuid() != 0:
            raise PermissionError("binding port 25 needs root")
        self.certdir = certdir
        self.cert, self.key = harness.make_cert(certdir, name="peer", cn="mx.world.test",
                                                san="DNS:mx.world.test,DNS:localhost")
        self._ctx = None
        self.peers = []
        rnd = random.SystemRandom()
        self.prefix = f"127.{rnd.randint(10, 250)}.{rnd.randint(1, 250)}"
        self.next_host = 2

    def server_context(self):
        if self._ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.cert, self.key)
            self._ctx = ctx
        return self._ctx

    def unused_addr(self):
        addr = f"{self.prefix}.{self.next_host}"
        self.next_host += 1
        return addr

    def peer(self, behaviour="accept", **opts):
        for _ in range(20):
            addr = self.unused_addr()
            try:
                p = Peer(self, addr, behaviour, **opts)
            except OSError:
                continue
            self.peers.append(p)
            return p
        raise RuntimeError("no free loopback address for a peer")

    def close(self):
        for p in self.peers:
            p.close()
        self.peers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def wait_for(predicate, what, timeout=None):
    return harness.wait_until(predicate, what, timeout=timeout or harness.DEADLINE)
