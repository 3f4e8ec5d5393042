"""Session time limits: a client that sends nothing for idle_timeout (between commands or
in the middle of DATA) gets 421 4.4.2 and is disconnected, and a session older than
session_timeout gets the same although its idle_timeout is far away. The tests only wait
for the server's reply (socket timeout = the harness deadline); no duration is asserted."""

import harness
from harness import SmarthostCase, make_message


class Timeouts(SmarthostCase):
    def test_idle_between_commands(self):
        sh = self.start_smarthost(config={"limits": {"idle_timeout": "1s"}})
        c = self.connect(sh)
        c.ehlo()
        c.expect(c.reply(), 421, "4.4.2")
        self.assertEqual(c.read_until_closed(), [])

    def test_idle_inside_data(self):
        sh = self.start_smarthost(config={"limits": {"idle_timeout": "1s"}})
        c = self.session(sh)
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        c.send(make_message("never finished"))          # no end of data
        c.expect(c.reply(), 421, "4.4.2")
        self.assertEqual(c.read_until_closed(), [])
        self.assertEqual(sh.queue(), [])

    def test_idle_after_auth(self):
        """AUTH runs on a worker thread (a first login, a wrong password): a client that
        falls silent after the answer is still idle, and is closed like any other."""
        sh = self.start_smarthost(config={"limits": {"idle_timeout": "1s"}})
        for password in (sh.users["alice"], "wrong"):
            with self.subTest(right=password != "wrong"):
                c = self.connect(sh)
                c.ehlo()
                c.starttls()
                c.ehlo()
                r = c.auth_plain("alice", password)
                c.expect(r, 235 if password != "wrong" else 535)
                c.expect(c.reply(), 421, "4.4.2")
                self.assertEqual(c.read_until_closed(), [])

    def test_idle_during_the_tls_handshake(self):
        """A client silent after 220 to STARTTLS is closed, with no plaintext 421 thrown
        into what is by then a TLS stream."""
        sh = self.start_smarthost(config={"limits": {"idle_timeout": "1s"}})
        c = self.connect(sh)
        c.ehlo()
        c.cmd("STARTTLS", 220, "2.0.0")
        c.sock.settimeout(harness.IO_TIMEOUT)
        rest = b""
        while True:
            chunk = c.sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        self.assertEqual(rest, b"", "bytes after 220 to STARTTLS, before any ClientHello")

    def test_session_time_limit(self):
        sh = self.start_smarthost(config={"limits": {"idle_timeout": "1h",
                                                     "session_timeout": "10s"}})
        c = self.session(sh)
        c.cmd("NOOP", 250, "2.0.0")
        c.expect(c.reply(), 421, "4.4.2")
        self.assertEqual(c.read_until_closed(), [])


if __name__ == "__main__":
    harness.main()
