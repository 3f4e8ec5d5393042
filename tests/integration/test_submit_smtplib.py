"""Submission with Python's smtplib on the STARTTLS listener: EHLO capabilities before and
after TLS, AUTH PLAIN and AUTH LOGIN (with and without initial responses), and what is
stored: envelope, auth user, our Received header (TLS version, cipher, user, QID), the
Message-ID/Date fix-ups (added once when missing, never duplicated), the log line."""

import re
import smtplib

import harness
from harness import SmarthostCase, make_message

MAX_SIZE = 1048576


class SubmitSmtplib(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(config={"limits": {"max_message_size": "1M"}})

    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.sh.ports["submission"], local_hostname="client.test",
                         timeout=harness.IO_TIMEOUT)
        self.addCleanup(s.close)
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        self.assertTrue(s.has_extn("starttls"), s.esmtp_features)
        self.assertFalse(s.has_extn("auth"), f"AUTH offered before TLS: {s.esmtp_features}")
        code, msg = s.starttls(context=self.sh.client_context())
        self.assertEqual(code, 220)
        self.assertTrue(msg.startswith(b"2.0.0"), msg)
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        for kw in ("pipelining", "8bitmime", "enhancedstatuscodes", "auth"):
            self.assertTrue(s.has_extn(kw), f"{kw} missing after STARTTLS: {s.esmtp_features}")
        self.assertFalse(s.has_extn("starttls"), "STARTTLS offered inside TLS")
        self.assertEqual(s.esmtp_features["size"], str(MAX_SIZE))
        mechs = s.esmtp_features["auth"].upper().split()
        self.assertIn("PLAIN", mechs)
        self.assertIn("LOGIN", mechs)
        return s

    def send(self, s, data, rcpts=("one@example.test", "two@example.test"),
             sender="alice@example.test"):
        code, msg = s.mail(sender)
        self.assertEqual((code, msg[:5]), (250, b"2.1.0"), msg)
        for r in rcpts:
            code, msg = s.rcpt(r)
            self.assertEqual((code, msg[:5]), (250, b"2.1.5"), msg)
        code, msg = s.data(data)
        self.assertEqual((code, msg[:5]), (250, b"2.0.0"), msg)
        m = re.search(rb"queued as ([0-9A-Za-z]{15})\b", msg)
        self.assertIsNotNone(m, msg)
        return m.group(1).decode()

    def check_stored(self, qid, user, data, rcpts=("one@example.test", "two@example.test"),
                     sender="alice@example.test"):
        msg = self.sh.message(qid)
        self.assertEqual(msg.sender, sender)
        self.assertEqual(msg.recipients, list(rcpts))
        self.assertEqual(msg.auth_user, user)
        self.assertIn("127.0.0.1", msg.client_addr)
        self.assertEqual(msg.helo, "client.test")
        self.assertEqual(msg.state, "queued")
        self.assert_received(self.sh, msg, qid, user, tls=r"TLS1\.3")
        self.assertTrue(msg.body.endswith(data), f"client message not stored intact: {msg!r}")
        self.assertIsNone(harness.lone_cr_or_lf(msg.body), msg.body)
        self.sh.wait_log(rf"{qid}: from=<{re.escape(sender)}>, size=\d+, nrcpt={len(rcpts)}, "
                         rf"user={user}, client=\[127\.0\.0\.1\] queued")
        # smarthostctl shows the same message.
        listed = [e for e in self.sh.queue_json() if e["qid"] == qid]
        self.assertEqual(len(listed), 1, f"{qid} not in `smarthostctl queue list --json`")
        entry = listed[0]
        self.assertEqual((entry["sender"], entry["recipients"], entry["state"], entry["auth_user"]),
                         (sender, len(rcpts), "queued", user))
        self.assertIsInstance(entry["size"], int)
        self.assertGreaterEqual(entry["size"], len(data))
        return msg

    def test_auth_plain_initial_response(self):
        s = self.smtp()
        code, msg = s.login("alice", self.sh.users["alice"])   # smtplib prefers PLAIN here
        self.assertEqual((code, msg[:5]), (235, b"2.7.0"))
        data = make_message("plain with initial response")
        qid = self.send(s, data)
        s.quit()
        msg = self.check_stored(qid, "alice", data)
        # Added once each when the device left them out, before the client's headers.
        self.assertEqual(len(msg.header_values("Message-ID")), 1, msg)
        self.assertEqual(len(msg.header_values("Date")), 1, msg)
        self.assertRegex(msg.header_values("Message-ID")[0], r"^<[^<>@\s]+@[^<>@\s]+>$")
        date = msg.header_values("Date")[0]
        self.assertIsNotNone(harness.email.utils.parsedate_to_datetime(date), date)

    def test_auth_plain_without_initial_response(self):
        s = self.smtp()
        s.user, s.password = "bob", self.sh.users["bob"]   # read by smtplib's auth_plain
        code, msg = s.auth("PLAIN", s.auth_plain, initial_response_ok=False)
        self.assertEqual((code, msg[:5]), (235, b"2.7.0"))
        data = make_message("plain without initial response", message_id="<x1@dev.test>")
        qid = self.send(s, data, rcpts=("r@example.test",))
        s.quit()
        msg = self.check_stored(qid, "bob", data, rcpts=("r@example.test",))
        self.assertEqual(msg.header_values("Message-ID"), ["<x1@dev.test>"])
        self.assertEqual(len(msg.header_values("Date")), 1, msg)

    def test_auth_login_with_initial_response(self):
        s = self.smtp()
        s.user, s.password = "bob", self.sh.users["bob"]
        code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=True)
        self.assertEqual((code, msg[:5]), (235, b"2.7.0"))
        data = make_message("login, initial response", message_id="<x2@dev.test>",
                            date="Mon, 2 Feb 2026 10:00:00 +0100")
        qid = self.send(s, data)
        s.quit()
        msg = self.check_stored(qid, "bob", data)
        # Present ones are kept as sent and never duplicated.
        self.assertEqual(msg.header_values("Message-ID"), ["<x2@dev.test>"])
        self.assertEqual(msg.header_values("Date"), ["Mon, 2 Feb 2026 10:00:00 +0100"])

    def test_auth_login_without_initial_response(self):
        s = self.smtp()
        s.user, s.password = "alice", self.sh.users["alice"]
        code, msg = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        self.assertEqual((code, msg[:5]), (235, b"2.7.0"))
        data = make_message("login, no initial response", date="Tue, 3 Feb 2026 11:00:00 +0000")
        qid = self.send(s, data, rcpts=("solo@example.test",))
        s.quit()
        msg = self.check_stored(qid, "alice", data, rcpts=("solo@example.test",))
        self.assertEqual(len(msg.header_values("Message-ID")), 1, msg)
        self.assertEqual(msg.header_values("Date"), ["Tue, 3 Feb 2026 11:00:00 +0000"])

    def test_login_prompts_and_codes_raw(self):
        """The exact LOGIN prompts (RFC 4954 practice) and the reply codes on the wire."""
        c = self.connect(self.sh)
        c.expect(c.greeting, 220, text=re.escape(self.sh.hostname) + r".*ESMTP")
        c.ehlo()
        c.starttls()
        ehlo = c.ehlo()
        self.assertIn("AUTH", ehlo.keywords)
        self.assertEqual(ehlo.keywords["SIZE"], f"SIZE {MAX_SIZE}")
        c.expect(c.auth_login("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.cmd("NOOP", 250, "2.0.0")
        c.cmd("RSET", 250, "2.0.0")
        c.cmd("VRFY alice", 252, "2.5.0")
        c.cmd("HELP", 214, "2.0.0")
        c.quit()


if __name__ == "__main__":
    harness.main()
