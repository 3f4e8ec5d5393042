"""TLS protocol versions: TLS 1.0 and 1.1 are refused by the default tls_priority (on the
implicit and the STARTTLS listener) and accepted on a listener whose tls_priority allows
them (old printers), where submission works and Received names the version. TLS 1.2 and
1.3 work everywhere. The client side needs OpenSSL at security level 0 for TLS < 1.2;
a local OpenSSL-to-OpenSSL handshake proves the client stack can do it before we blame
the server, and the tests skip (saying why) only if it cannot."""

import socket
import ssl
import threading

import harness
from harness import SmarthostCase, make_message

LEGACY_PRIORITY = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:+VERS-TLS1.1:+VERS-TLS1.0"
OLD = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}
NEW = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
RECEIVED_NAME = {"TLSv1": r"TLS1\.0", "TLSv1.1": r"TLS1\.1", "TLSv1.2": r"TLS1\.2",
                 "TLSv1.3": r"TLS1\.3"}


def client_stack_can(version, cert, key):
    """Whether this Python/OpenSSL can complete a handshake at exactly `version` with
    itself on loopback; returns (bool, reason)."""
    try:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        server_ctx.minimum_version = version
        server_ctx.maximum_version = version
        client_ctx = harness.client_context(cert, minimum=version, maximum=version, legacy=True)
    except (ssl.SSLError, ValueError) as e:
        return False, f"cannot configure OpenSSL for {version}: {e}"
    listener = socket.create_server(("127.0.0.1", 0))
    errors = []

    def serve():
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (OSError, ssl.SSLError) as e:
            errors.append(e)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=harness.IO_TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"x")
        return True, ""
    except (OSError, ssl.SSLError) as e:
        return False, f"OpenSSL {ssl.OPENSSL_VERSION} cannot do {version} even with itself: {e}"
    finally:
        t.join(harness.IO_TIMEOUT)
        listener.close()


class TlsVersions(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(listeners={
            "legacy": {"mode": "implicit", "tls_priority": LEGACY_PRIORITY},
            "legacy587": {"mode": "starttls", "tls_priority": LEGACY_PRIORITY},
        })
        cls.capable = {name: client_stack_can(v, cls.sh.cert, cls.sh.key)
                       for name, v in OLD.items()}

    def require_client(self, name):
        ok, why = self.capable[name]
        if not ok:
            self.skipTest(why)

    def ctx(self, version, legacy=False):
        return self.sh.client_context(minimum=version, maximum=version, legacy=legacy)

    def handshake_refused(self, listener, ctx):
        """True when the TLS handshake with this listener fails (alert or close)."""
        port = self.sh.ports[listener]
        if self.sh.modes[listener] == "implicit":
            raw = socket.create_connection(("127.0.0.1", port), timeout=harness.IO_TIMEOUT)
        else:
            c = harness.Client(port, context=ctx)
            c.ehlo()
            c.cmd("STARTTLS", 220, "2.0.0")
            raw = c.sock
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                return False
        except (ssl.SSLError, ConnectionError):
            return True
        finally:
            raw.close()

    def tls_connect(self, listener, ctx, tls_session=None):
        """TLS with the listener: from the first byte, or after EHLO and STARTTLS."""
        c = self.connect(self.sh, listener, context=ctx, tls_session=tls_session)
        if self.sh.modes[listener] == "starttls":
            c.ehlo()
            c.starttls(ctx)
        return c

    def submit_on(self, c, version_name, rcpt, subject):
        """On a TLS connection: AUTH, one message, QUIT; Received names the version."""
        self.assertEqual(c.tls_version(), version_name)
        c.ehlo()
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", [rcpt], make_message(subject))
        c.quit()
        self.assert_received(self.sh, self.sh.message(qid), qid, "alice",
                             tls=RECEIVED_NAME[version_name])

    def submit_with(self, listener, version_name, ctx):
        self.submit_on(self.tls_connect(listener, ctx), version_name, "old@example.test",
                       f"{version_name} on {listener}")

    def test_default_priority_refuses_old_versions(self):
        for name, version in OLD.items():
            for listener in ("submissions", "submission"):
                with self.subTest(version=name, listener=listener):
                    self.require_client(name)
                    refused = self.handshake_refused(listener, self.ctx(version, legacy=True))
                    self.assertTrue(refused, f"{listener} accepted {name} by default")
        # The daemon is still fine afterwards.
        self.sh.assert_running()

    def test_legacy_priority_accepts_old_versions(self):
        for name, version in OLD.items():
            for listener in ("legacy", "legacy587"):
                with self.subTest(version=name, listener=listener):
                    self.require_client(name)
                    self.submit_with(listener, name, self.ctx(version, legacy=True))

    def test_session_resumption(self):
        """A client that keeps the session of one connection resumes it on the next (no
        second full handshake), at TLS 1.3 (the ticket goes out with the first reply after
        the handshake) and TLS 1.2, on both kinds of listener; the resumed session
        submits like any other."""
        for name, version in NEW.items():
            for listener in ("submissions", "submission"):
                with self.subTest(version=name, listener=listener):
                    ctx = self.ctx(version)
                    first = self.tls_connect(listener, ctx)
                    first.ehlo()  # reading the reply reads a TLS 1.3 ticket before it
                    self.assertFalse(first.sock.session_reused)
                    session = first.sock.session
                    self.assertTrue(session.has_ticket, f"no session ticket at {name}")
                    first.quit()

                    again = self.tls_connect(listener, ctx, tls_session=session)
                    self.assertTrue(again.sock.session_reused,
                                    f"{name} on {listener}: full handshake again")
                    self.submit_on(again, name, "resumed@example.test",
                                   f"resumed {name} on {listener}")

    def test_new_versions_everywhere(self):
        for name, version in NEW.items():
            for listener in ("submissions", "submission", "legacy", "legacy587"):
                with self.subTest(version=name, listener=listener):
                    self.submit_with(listener, name, self.ctx(version))


if __name__ == "__main__":
    harness.main()
