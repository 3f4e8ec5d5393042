"""STARTTLS command injection (CVE-2011-0411 class): commands pipelined in plaintext in
the same write as STARTTLS must be discarded, never executed inside the TLS session; and
the session is reset by the handshake (RFC 3207 §4.2): MAIL before a new EHLO gets
503 5.5.1, and the first reply inside TLS answers the first command sent inside TLS."""

import harness
from harness import SmarthostCase, make_message


class StarttlsInjection(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost()

    def inject(self, injected, probe, probe_code, probe_enh=None):
        """Send "STARTTLS\\r\\n" + injected in one write, handshake, then send probe: the
        first reply read inside TLS must be the probe's."""
        c = self.connect(self.sh)
        c.ehlo()
        c.send(b"STARTTLS\r\n" + injected)
        c.expect(c.reply(), 220, "2.0.0")
        if c.buf:
            c.fail(f"plaintext reply to the injected command: {c.buf!r}")
        try:
            c.sock = c.tls_context.wrap_socket(c.sock, server_hostname="localhost")
        except OSError as e:
            c.fail(f"handshake failed after injection (bytes fed to TLS?): {e!r}")
        c.note(f"tls {c.sock.version()}")
        r = c.cmd(probe)
        c.expect(r, probe_code, probe_enh)
        return c

    def test_injected_mail_is_discarded(self):
        # If "MAIL FROM" ran after the handshake it would get 503 before our EHLO's 250.
        c = self.inject(b"MAIL FROM:<evil@example.test>\r\n", "EHLO client.test", 250)
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", ["r@example.test"], make_message("after injection"))
        c.quit()
        self.assertEqual(self.sh.message(qid).sender, "alice@example.test")

    def test_injected_rset_is_discarded(self):
        # RSET would answer 250; HELP answers 214: the first reply must be HELP's.
        c = self.inject(b"RSET\r\n", "HELP", 214, "2.0.0")
        c.ehlo()
        c.quit()

    def test_injected_auth_is_discarded(self):
        # An injected AUTH with valid credentials must not authenticate the TLS session.
        token = harness.b64("\0alice\0" + self.sh.users["alice"])
        c = self.inject(f"AUTH PLAIN {token}\r\n".encode(), "EHLO client.test", 250)
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.quit()

    def test_injected_pipeline_is_discarded(self):
        injected = (b"EHLO evil.test\r\nMAIL FROM:<evil@example.test>\r\n"
                    b"RCPT TO:<victim@example.test>\r\nDATA\r\n")
        c = self.inject(injected, "VRFY someone", 252, "2.5.0")
        c.ehlo()
        c.quit()
        self.assertFalse([m for m in self.sh.queue() if m.sender == "evil@example.test"])

    def test_mail_after_starttls_needs_new_ehlo(self):
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        c.cmd("MAIL FROM:<alice@example.test>", 503, "5.5.1")
        c.ehlo()
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RSET", 250, "2.0.0")
        c.quit()

    def test_second_starttls_refused(self):
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        ehlo = c.ehlo()
        self.assertNotIn("STARTTLS", ehlo.keywords)
        c.cmd("STARTTLS", 503, "5.5.1")
        c.quit()


if __name__ == "__main__":
    harness.main()
