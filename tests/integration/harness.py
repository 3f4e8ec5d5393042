"""harness.py — the fixture every integration scenario shares.

Owns: a temp dir with a self-signed certificate and a generated smarthost.conf, loopback
ports reserved for the test's lifetime, accounts created with `smarthostctl user add
--password-stdin`, a running smarthostd (stderr to a log file), readiness by connecting
under a deadline, raw SMTP dialogues (plain and TLS), queue reads straight from SQLite.
Must never: talk to anything but loopback, sleep to synchronise (every wait is a condition
polled under a deadline), or leave a process or a temp dir behind (context manager +
unittest cleanups + atexit + PR_SET_PDEATHSIG). Standard library only, for /usr/bin/python3.
"""

import atexit
import base64
import ctypes
import email.utils
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Generous: the whole suite also runs under ASan+UBSan on a shared 2-core machine. A
# deadline only bounds a wait for a condition; nothing is asserted about durations.
DEADLINE = float(os.environ.get("SMARTHOST_TEST_DEADLINE", "60"))
IO_TIMEOUT = float(os.environ.get("SMARTHOST_TEST_IO_TIMEOUT", "30"))

DEFAULT_USERS = {"alice": "alice-Secret-1", "bob": "bob-Secret-2"}
SANITIZER_PATTERNS = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
    r"WARNING: ThreadSanitizer|AddressSanitizer:DEADLYSIGNAL"
)
QID_RE = re.compile(r"queued as ([0-9A-Za-z]+)")

warnings.filterwarnings("ignore", category=DeprecationWarning)  # ssl.TLSVersion.TLSv1


def find_binary(env_name, name):
    """The binary ctest passes in env_name, else one from a build dir of the repo."""
    path = os.environ.get(env_name)
    if path:
        return path
    for build in ("build", "build-asan"):
        candidate = os.path.join(REPO, build, "cmd", name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{env_name} is not set and no {name} was found under {REPO}/build*")


SMARTHOSTD = find_binary("SMARTHOSTD", "smarthostd")
SMARTHOSTCTL = find_binary("SMARTHOSTCTL", "smarthostctl")


# ---- waiting under a deadline -------------------------------------------------------

def wait_until(predicate, what, timeout=DEADLINE, interval=0.02):
    """Poll predicate until it returns a true value (returned) or the deadline passes."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ---- processes: every child dies with us --------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup():
    # If this test process is killed (ctest timeout), the kernel kills the child too.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run_tool(argv, input=None, timeout=DEADLINE, env=None, cwd=None):
    """Run a client tool to completion; returns CompletedProcess with text output."""
    return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd, preexec_fn=_child_setup)


_live = []          # Smarthost instances not yet closed (atexit guard)
_reports = []       # (label, log tail) of every daemon, printed when a test failed


def _close_all_at_exit():
    for sh in list(_live):
        sh.close()


atexit.register(_close_all_at_exit)
# SIGTERM (e.g. ctest being stopped) becomes SystemExit so finally/atexit still run.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


# ---- certificates and ports ---------------------------------------------------------

def make_cert(directory, name="server", cn="localhost", key_type="ec",
              san="DNS:localhost,IP:127.0.0.1"):
    """Self-signed certificate for localhost + 127.0.0.1 with an ECDSA P-256 key
    (key_type "ec") or an RSA 2048 key ("rsa"); returns paths."""
    cert = os.path.join(directory, f"{name}-cert.pem")
    key = os.path.join(directory, f"{name}-key.pem")
    key_args = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
                if key_type == "ec" else ["-newkey", "rsa:2048"])
    r = run_tool(["openssl", "req", "-x509", *key_args, "-nodes",
                  "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={cn}",
                  "-addext", f"subjectAltName={san}"])
    if r.returncode != 0:
        raise RuntimeError(f"openssl req failed: {r.stderr}")
    return cert, key


def reserve_port(host="127.0.0.1"):
    """A free loopback port, kept reserved until the returned socket is closed.

    The socket is bound (never listening) without reuse flags, so no other bind(0) in
    parallel tests can pick the port; SO_REUSEPORT set afterwards lets smarthostd (same
    uid, SO_REUSEPORT per loop) bind it. A listening socket would steal connections."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s.getsockname()[1], s


def client_context(cafile, minimum=None, maximum=None, legacy=False):
    """A verifying client context trusting only cafile (the test's self-signed cert)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if legacy:
        # OpenSSL 3 refuses TLS 1.0/1.1 (SHA-1 signatures) at security level >= 1.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum is not None:
        ctx.minimum_version = minimum
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


# ---- SMTP replies and raw dialogues -------------------------------------------------

class Reply:
    """One (possibly multi-line) SMTP reply."""

    ENH_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")

    def __init__(self, lines):
        self.lines = lines                       # full text lines without CRLF
        self.code = int(lines[-1][:3])
        self.texts = [ln[4:] for ln in lines]   # text after "250-" / "250 "
        m = self.ENH_RE.match(self.texts[0])
        self.enhanced = m.group(1) if m else None

    @property
    def keywords(self):
        """EHLO keywords (upper case first word of every line but the first)."""
        return {t.split(" ")[0].upper(): t for t in self.texts[1:]}

    @property
    def qid(self):
        m = QID_RE.search(self.texts[-1])
        return m.group(1) if m else None

    def __repr__(self):
        return " | ".join(self.lines)


class DialogueError(AssertionError):
    pass


class Client:
    """A raw SMTP dialogue over a TCP (optionally TLS) socket, keeping a transcript.

    Every expectation failure raises with the whole transcript, so a report can quote
    the exact dialogue."""

    def __init__(self, port, host="127.0.0.1", source=None, context=None, implicit=False,
                 server_hostname="localhost", timeout=IO_TIMEOUT, greeting=True,
                 tls_session=None):
        """context: the client TLS context, used at once when implicit, else by starttls();
        tls_session: an earlier connection's ssl.SSLSession to resume."""
        self.transcript = []
        self.buf = b""
        self.tls_context = context
        self.tls_session = tls_session
        self.server_hostname = server_hostname
        src = (source, 0) if source else None
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=src)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.note(f"connect {host}:{port}" + (f" from {source}" if source else ""))
        if implicit:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname,
                                            session=tls_session)
            self.note(f"tls {self.sock.version()} {self.sock.cipher()[0]}")
        self.greeting = self.reply() if greeting else None

    # transcript
    def note(self, text):
        self.transcript.append(f"-- {text}")

    def dialogue(self):
        return "\n".join(self.transcript)

    def fail(self, msg):
        raise DialogueError(f"{msg}\n--- dialogue ---\n{self.dialogue()}\n---")

    # I/O
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        shown = data
        if len(data) > 400:
            shown = data[:200] + b"<...%d bytes...>" % len(data) + data[-100:]
        self.transcript.append("C: " + repr(shown)[2:-1])
        self.sock.sendall(data)

    def _read_line(self):
        while b"\r\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                self.fail("timed out waiting for a reply line")
            except (ConnectionResetError, ssl.SSLError, OSError) as e:
                self.fail(f"connection error while reading: {e!r}")
            if not chunk:
                self.fail("connection closed by the server while a reply was expected"
                          + (f" (partial: {self.buf!r})" if self.buf else ""))
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        text = line.decode("utf-8", "replace")
        self.transcript.append("S: " + text)
        return text

    def reply(self):
        """Read one reply (all its lines)."""
        lines = []
        while True:
            line = self._read_line()
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                self.fail(f"malformed reply line {line!r}")
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def expect(self, reply, code, enhanced=None, text=None):
        """Assert code (int or tuple of ints), enhanced code and a regex on the text."""
        codes = code if isinstance(code, tuple) else (code,)
        if reply.code not in codes:
            self.fail(f"expected {code} {enhanced or ''}, got {reply!r}")
        if enhanced is not None and reply.enhanced != enhanced:
            self.fail(f"expected enhanced code {enhanced}, got {reply!r}")
        if text is not None and not re.search(text, "\n".join(reply.texts)):
            self.fail(f"expected text matching {text!r}, got {reply!r}")
        return reply

    def cmd(self, line, code=None, enhanced=None, text=None):
        """Send one command line; read its reply; check it when code is given."""
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        r = self.reply()
        if code is not None:
            self.expect(r, code, enhanced, text)
        return r

    def read_until_closed(self, timeout=IO_TIMEOUT):
        """Read until the server closes; return the replies received meanwhile."""
        self.sock.settimeout(timeout)
        replies = []
        while True:
            if b"\r\n" in self.buf:
                replies.append(self.reply())
                continue
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                self.fail("the server did not close the connection")
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            except ssl.SSLError as e:
                if "EOF" in str(e) or "SHUTDOWN" in str(e).upper():
                    chunk = b""
                else:
                    self.fail(f"TLS error while waiting for close: {e!r}")
            if not chunk:
                if self.buf:
                    self.fail(f"partial line before close: {self.buf!r}")
                self.note("closed by server")
                return replies
            self.buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # SMTP steps
    def ehlo(self, name="client.test"):
        return self.cmd(f"EHLO {name}", 250)

    def starttls(self, context=None):
        ctx = context or self.tls_context
        self.cmd("STARTTLS", 220, "2.0.0")
        if self.buf:
            self.fail(f"plaintext bytes after the 220 to STARTTLS: {self.buf!r}")
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_hostname,
                                        session=self.tls_session)
        except (ssl.SSLError, OSError) as e:
            self.fail(f"TLS handshake after STARTTLS failed: {e!r}")
        self.note(f"tls {self.sock.version()} {self.sock.cipher()[0]}")

    def tls_version(self):
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def auth_plain(self, user, password, initial=True):
        """AUTH PLAIN; returns the final reply (any refusal before it is returned too)."""
        token = b64(f"\0{user}\0{password}")
        if initial:
            return self.cmd(f"AUTH PLAIN {token}")
        r = self.cmd("AUTH PLAIN")
        if r.code != 334:
            return r
        return self.cmd(token)

    def auth_login(self, user, password, initial=False):
        """AUTH LOGIN with the exact prompts "Username:" / "Password:" (base64); returns
        the final reply (a refusal of the AUTH command itself is returned as is)."""
        if initial:
            r = self.cmd(f"AUTH LOGIN {b64(user)}")
        else:
            r = self.cmd("AUTH LOGIN")
            if r.code != 334:
                return r
            self.expect(r, 334, text=r"^VXNlcm5hbWU6$")
            r = self.cmd(b64(user))
        if r.code != 334:
            return r
        self.expect(r, 334, text=r"^UGFzc3dvcmQ6$")
        return self.cmd(b64(password))

    def login(self, user, password, tls=True):
        """EHLO [STARTTLS EHLO] AUTH PLAIN → 235 2.7.0."""
        self.ehlo()
        if tls and self.tls_version() is None:
            self.starttls()
            self.ehlo()
        self.expect(self.auth_plain(user, password), 235, "2.7.0")

    def mail(self, sender, rcpts, data, stuff=True):
        """MAIL, RCPT…, DATA, content (dot-stuffed unless stuff=False), CRLF.CRLF.
        Every step before the end of data must succeed; returns the final reply."""
        self.cmd(f"MAIL FROM:<{sender}>", 250, "2.1.0")
        for r in rcpts:
            self.cmd(f"RCPT TO:<{r}>", 250, "2.1.5")
        self.cmd("DATA", 354)
        self.send((dot_stuff(data) if stuff else data) + b".\r\n")
        return self.reply()

    def submit(self, sender, rcpts, data, stuff=True):
        """mail() that must end in 250 2.0.0; returns the queue id."""
        r = self.expect(self.mail(sender, rcpts, data, stuff), 250, "2.0.0")
        qid = r.qid
        if qid is None or not re.fullmatch(r"[0-9A-Za-z]{15}", qid):
            self.fail(f"no 15-character queue id in {r!r}")
        return qid

    def quit(self):
        self.cmd("QUIT", 221, "2.0.0")
        self.read_until_closed()
        self.close()


def b64(text):
    if isinstance(text, str):
        text = text.encode()
    return base64.b64encode(text).decode()


def dot_stuff(data):
    """RFC 5321 §4.5.2: double a leading dot on every line (data uses CRLF)."""
    out = re.sub(rb"(^|\r\n)\.", rb"\1..", data)
    return out


def make_message(subject, body="Hello from the integration tests.\r\n", sender="alice@example.test",
                 to="rcpt@example.test", message_id=None, date=None, extra=()):
    """An RFC 5322 message with CRLF line endings (bytes). message_id/date None = absent."""
    lines = [f"From: <{sender}>", f"To: <{to}>", f"Subject: {subject}"]
    if message_id is not None:
        lines.append(f"Message-ID: {message_id}")
    if date is not None:
        lines.append(f"Date: {date}")
    lines.extend(extra)
    head = "\r\n".join(lines).encode() + b"\r\n\r\n"
    return head + (body.encode() if isinstance(body, str) else body)


# ---- the queue, as stored ----------------------------------------------------------

class StoredMessage:
    def __init__(self, row, recipients):
        (self.id, self.qid, self.sender, self.auth_user, self.client_addr, self.helo,
         self.size, self.state, self.body) = row
        self.body = bytes(self.body)
        self.recipients = recipients                  # addresses, in RCPT order

    @property
    def header_block(self):
        end = self.body.find(b"\r\n\r\n")
        return self.body if end < 0 else self.body[:end + 2]

    def headers(self):
        """[(name, unfolded value)] of the header section, in order."""
        text = self.header_block.decode("utf-8", "replace")
        text = re.sub(r"\r\n[ \t]+", " ", text)
        out = []
        for line in text.split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                out.append((name.strip(), value.strip()))
        return out

    def header_values(self, name):
        return [v for n, v in self.headers() if n.lower() == name.lower()]

    def client_part(self, first_line):
        """The body from the client's first header line (bytes) onwards."""
        i = self.body.find(first_line)
        return None if i < 0 else self.body[i:]

    def __repr__(self):
        return (f"<{self.qid} from={self.sender} rcpts={self.recipients} user={self.auth_user} "
                f"state={self.state} body={self.body[:300]!r}...>")


def spool_body(db_path, qid):
    """The body of a message whose content is in a file (smarthostd's large bodies)."""
    with open(os.path.join(db_path + "-bodies", qid), "rb") as f:
        return f.read()


def read_queue(db_path):
    """Every message in the queue database (read-only connection), oldest first."""
    if not os.path.exists(db_path):
        return []
    uri = "file:" + urllib.parse.quote(db_path) + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=DEADLINE)
    try:
        rows = con.execute("SELECT m.id, m.qid, m.sender, m.auth_user, m.client_addr, m.helo,"
                           " m.size, m.state, COALESCE(b.data, X''), COALESCE(b.file, 0)"
                           " FROM messages m"
                           " LEFT JOIN bodies b ON b.message_id = m.id"  # none once done
                           " ORDER BY m.id").fetchall()
        # a large body is a file named by the qid beside the database
        rows = [r[:8] + (spool_body(db_path, r[1]) if r[9] else r[8],) for r in rows]
        rcpts = {}
        for mid, addr in con.execute("SELECT message_id, address FROM recipients ORDER BY id"):
            rcpts.setdefault(mid, []).append(addr)
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        con.close()
    return [StoredMessage(r, rcpts.get(r[0], [])) for r in rows]


def lone_cr_or_lf(data):
    """Offset of the first CR not followed by LF or LF not preceded by CR, else None."""
    m = re.search(rb"\r(?!\n)|(?<!\r)\n", data)
    return None if m is None else m.start()


# ---- the daemon ----------------------------------------------------------------------

class Smarthost:
    """A smarthostd with its own temp dir, config, certificate, database and log.

    config: {section: {key: value or None (= leave out)}} merged over the defaults.
    listeners: {name: {key: value} or None (= no such listener)} merged over the default
    pair "submission" (starttls) and "submissions" (implicit); "address" is filled with
    a reserved loopback port unless given. Use as a context manager or call close()."""

    _count = 0

    def __init__(self, config=None, listeners=None, users=None, start=True, label="smarthost"):
        Smarthost._count += 1
        self.label = label
        self.hostname = f"mx{os.getpid()}-{Smarthost._count}.smarthost.test"
        self.proc = None
        self.log_file = None
        self.ports = {}
        self.modes = {}
        self._reserved = []
        self._closed = False
        self.dir = tempfile.mkdtemp(prefix="smarthost-it-")
        _live.append(self)
        try:
            self.cert, self.key = make_cert(self.dir)
            self.db = os.path.join(self.dir, "smarthost.db")
            self.conf_path = os.path.join(self.dir, "smarthost.conf")
            self.log_path = os.path.join(self.dir, "smarthostd.log")
            self.users = dict(DEFAULT_USERS if users is None else users)
            self._build_config(config or {}, listeners or {})
            self.write_config()
            for name, password in self.users.items():
                self.add_user(name, password)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        problems = self.close()
        if problems and exc[0] is None:
            raise AssertionError(problems)

    # configuration
    def _build_config(self, overrides, listener_overrides):
        self.sections = {
            "server": {"hostname": self.hostname, "user": "", "database": self.db,
                       "threads": "2"},
            "log": {"target": "stderr", "level": "info"},
            "tls": {"cert_file": self.cert, "key_file": self.key},
            "limits": {},
            "auth": {"failure_delay": "10ms", "max_delay": "40ms"},
            "queue": {},
            # Tests never deliver beyond loopback: the relay is off unless a test turns it on
            # with its own DNS server and peers (world_dns / world_smtp).
            "relay": {"enabled": "no",
                      "control_socket": os.path.join(self.dir, "control.sock")},
        }
        for section, keys in overrides.items():
            target = self.sections.setdefault(section, {})
            for k, v in keys.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = str(v)
        listeners = {"submission": {"mode": "starttls"}, "submissions": {"mode": "implicit"}}
        for name, keys in listener_overrides.items():
            if keys is None:
                listeners.pop(name, None)
            else:
                listeners.setdefault(name, {}).update({k: str(v) for k, v in keys.items()})
        for name, keys in listeners.items():
            if "address" not in keys:
                port, sock = reserve_port()
                self._reserved.append(sock)
                keys["address"] = f"127.0.0.1:{port}"
            self.ports[name] = int(keys["address"].split(",")[0].rsplit(":", 1)[1])
            self.modes[name] = keys.get("mode", "starttls")
            self.sections[f"listener {name}"] = keys

    def config_text(self):
        out = []
        for section, keys in self.sections.items():
            out.append(f"[{section}]")
            out.extend(f"{k} = {v}" for k, v in keys.items())
            out.append("")
        return "\n".join(out)

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write(self.config_text())

    # smarthostctl
    def ctl(self, *args, input=None, expect=0):
        r = run_tool([SMARTHOSTCTL, "-c", self.conf_path, *args], input=input)
        if expect is not None and r.returncode != expect:
            raise AssertionError(f"smarthostctl {' '.join(args)} exited {r.returncode}, "
                                 f"expected {expect}\nstdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def add_user(self, name, password):
        self.users[name] = password
        return self.ctl("user", "add", name, "--password-stdin", input=password + "\n")

    def queue_json(self):
        return json.loads(self.ctl("queue", "list", "--json").stdout)

    # lifecycle
    def start(self, wait=True):
        assert self.proc is None, "already running"
        self.log_file = open(self.log_path, "ab")
        self.log_mark_at_start = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen([SMARTHOSTD, "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     cwd=self.dir, preexec_fn=_child_setup)
        if wait:
            self.wait_ready()

    def wait_ready(self):
        """Every listener greets (probe: connect, [TLS], 220, QUIT, 221), under a deadline."""
        for name in self.ports:
            wait_until(lambda: self._probe(name), f"listener {name} of smarthostd to answer",
                       interval=0.05)

    def _probe(self, name):
        self.assert_running()
        try:
            c = Client(self.ports[name], context=self.client_context(),
                       implicit=self.modes[name] == "implicit", timeout=10)
        except (OSError, ssl.SSLError, DialogueError):
            return False
        try:
            c.expect(c.greeting, 220)
            c.quit()
        finally:
            c.close()
        return True

    def assert_running(self):
        if self.proc is None:
            raise AssertionError("smarthostd is not running")
        rc = self.proc.poll()
        if rc is not None:
            raise AssertionError(f"smarthostd exited with status {rc}\n{self.log_tail()}")

    def stop(self, sig=signal.SIGTERM, expect=0):
        """Signal the daemon, wait for it, check its exit status and its log for sanitizer
        reports. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._after_exit()
            raise AssertionError(f"smarthostd did not exit after signal {sig}\n{self.log_tail()}")
        self._after_exit()
        problem = self.sanitizer_report()
        if problem:
            raise AssertionError(f"sanitizer report in the smarthostd log:\n{problem}")
        if expect is not None and rc != expect:
            raise AssertionError(f"smarthostd exited with {rc}, expected {expect}\n"
                                 + self.log_tail())
        return rc

    def kill9(self):
        """SIGKILL (a crash); nothing about the exit is checked."""
        self.proc.kill()
        self.proc.wait()
        self._after_exit()

    def restart(self):
        self.start()

    def _after_exit(self):
        self.proc = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def close(self):
        """Stop the daemon (SIGTERM, then SIGKILL), remove the temp dir. Idempotent.
        Returns a description of problems seen (bad exit, sanitizer report) or ''."""
        if self._closed:
            return ""
        self._closed = True
        problems = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    rc = self.proc.wait(timeout=DEADLINE)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
                    problems.append("smarthostd did not exit after SIGTERM")
                if rc != 0:
                    problems.append(f"smarthostd exited with {rc} after SIGTERM")
            else:
                problems.append(f"smarthostd had already exited with {self.proc.returncode}")
            self._after_exit()
        report = self.sanitizer_report()
        if report:
            problems.append("sanitizer report in the smarthostd log:\n" + report)
        _reports.append((self.label, self.log_tail(200)))
        for s in self._reserved:
            s.close()
        if self in _live:
            _live.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            problems.append(self.log_tail())
        return "\n".join(problems)

    # logs
    def log_text(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self):
        """An offset for wait_log(since=…): only lines logged after this call."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_tail(self, lines=60):
        text = self.log_text().splitlines()
        return f"--- smarthostd log ({self.label}, last {lines} lines) ---\n" + \
            "\n".join(text[-lines:]) + "\n---"

    def wait_log(self, pattern, since=0, timeout=DEADLINE):
        """Wait until a log line (after offset since) matches the regex; return the match."""
        rx = re.compile(pattern, re.M)

        def found():
            m = rx.search(self.log_text(since))
            if m is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"smarthostd exited while waiting for log /{pattern}/\n"
                                     + self.log_tail())
            return m
        try:
            return wait_until(found, f"log line /{pattern}/", timeout=timeout)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_tail()}") from None

    def sanitizer_report(self):
        text = self.log_text()
        m = SANITIZER_PATTERNS.search(text)
        if m is None:
            return ""
        start = text.rfind("\n", 0, m.start()) + 1
        return text[start:start + 6000]

    # clients
    def client_context(self, **kw):
        return client_context(self.cert, **kw)

    def connect(self, listener="submission", source=None, context=None, **kw):
        """A raw dialogue to a listener; TLS from the first byte on implicit listeners."""
        return Client(self.ports[listener], source=source, context=context or self.client_context(),
                      implicit=self.modes[listener] == "implicit", **kw)

    def session(self, user="alice", listener="submission", source=None):
        """An authenticated session (EHLO, STARTTLS, EHLO, AUTH PLAIN)."""
        c = self.connect(listener, source=source)
        c.login(user, self.users[user])
        return c

    def queue(self):
        return read_queue(self.db)

    def message(self, qid):
        """The stored message with this queue id (fails if absent)."""
        for m in self.queue():
            if m.qid == qid:
                return m
        raise AssertionError(f"queue id {qid} is not in the queue")


# ---- unittest glue -------------------------------------------------------------------

class SmarthostCase(unittest.TestCase):
    """Base class: start_smarthost() and connect helpers with automatic cleanup."""

    maxDiff = 4000

    def start_smarthost(self, **kw):
        kw.setdefault("label", self.id())
        sh = Smarthost(**kw)
        self.addCleanup(self._close_smarthost, sh)
        return sh

    def _close_smarthost(self, sh):
        problems = sh.close()
        if problems:
            self.fail(problems)

    @classmethod
    def start_class_smarthost(cls, **kw):
        """One daemon for every test of the class (closed by a class cleanup)."""
        kw.setdefault("label", cls.__name__)
        sh = Smarthost(**kw)

        def close():
            problems = sh.close()
            if problems:
                raise AssertionError(problems)
        cls.addClassCleanup(close)
        return sh

    def connect(self, sh, listener="submission", **kw):
        c = sh.connect(listener, **kw)
        self.addCleanup(c.close)
        return c

    def session(self, sh, user="alice", listener="submission", source=None):
        c = sh.session(user, listener, source)
        self.addCleanup(c.close)
        return c

    def assert_received(self, sh, msg, qid, user, helo="client.test", tls=r"TLS1\.[23]"):
        """Our trace header comes first and names HELO, client IP, host, TLS, user, QID."""
        hostname = sh.hostname
        first = msg.headers()[0]
        self.assertEqual(first[0], "Received", f"first header is not ours: {msg!r}")
        rx = (rf"^from {re.escape(helo)} \(\[127\.0\.0\.1\]\) by {re.escape(hostname)} "
              rf"\(smarthost\) with ESMTPSA \(({tls}) ([^)]+)\) \(authenticated as "
              rf"{re.escape(user)}\) id {qid}; (.+)$")
        m = re.match(rx, first[1])
        self.assertIsNotNone(m, f"Received header {first[1]!r} does not match {rx!r}")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(m.group(3)),
                             f"bad date in Received: {m.group(3)!r}")
        return m


def main():
    """Run the calling module's tests; print daemon logs when something failed; exit
    77 (ctest SKIP_RETURN_CODE) when every test was skipped."""
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    result = prog.result
    if not result.wasSuccessful():
        for label, tail in _reports:
            print(f"\n=== {label} ===\n{tail}", file=sys.stderr)
    if result.testsRun and len(result.skipped) == result.testsRun:
        sys.exit(77)
    sys.exit(0 if result.wasSuccessful() else 1)
