"""SMTP smuggling (CVE-2023-51764 class) and dot-stuffing. Only <CRLF>.<CRLF> ends the
data: with bare_lf = normalize every bare-LF / bare-CR variant of a would-be end of data
yields exactly ONE queued message that holds the smuggled commands as content, with CRLF
line endings only (no lone CR or LF anywhere in the stored blob), and no extra reply is
ever sent; with bare_lf = reject the reply is 550 5.6.0 and nothing is queued. Stuffed
dots are removed in the store."""

import re

import harness
from harness import SmarthostCase

EVIL = b"MAIL FROM:<evil@example.test>"
FIRST = b"From: <alice@example.test>"

# name -> the part of the body that tries to end the data early and start a second
# transaction. The real end of data (CRLF . CRLF) follows "last line\r\n".
SMUGGLE = {
    "lf_dot_lf": b"line1\n.\n" + EVIL + b"\nRCPT TO:<victim@example.test>\nDATA\n\nevil body\n.\n",
    "cr_dot_cr": b"line1\r.\r" + EVIL + b"\rRCPT TO:<victim@example.test>\rDATA\r\revil body\r.\r",
    "crlf_dot_lf": b"line1\r\n.\n" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n",
    "lf_dot_crlf": b"line1\n.\r\n" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n",
    "crlf_dot_cr": b"line1\r\n.\r" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\n",
    "cr_dot_crlf": b"line1\r.\r\n" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\n",
    "lf_dot_cr": b"line1\n.\r" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\n",
    "cr_dot_lf": b"line1\r.\n" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\n",
    "crlf_dot_crcrlf": b"line1\r\n.\r\r\n" + EVIL + b"\r\nRCPT TO:<victim@example.test>\r\n",
    "bare_lf_only": b"line1\nline2\n" + EVIL + b"\n",
}
# Variants whose normalised line structure is unambiguous (each CRLF, bare CR and bare LF
# is one line end) are also compared line by line with the stored content.
EXACT = {"lf_dot_lf", "cr_dot_cr", "crlf_dot_lf", "lf_dot_crlf", "crlf_dot_cr", "cr_dot_crlf",
         "lf_dot_cr", "cr_dot_lf", "bare_lf_only"}


def message(name, body):
    head = (FIRST + b"\r\nTo: <r@example.test>\r\nSubject: smuggle " + name.encode()
            + b"\r\nMessage-ID: <" + name.encode() + b"@client.test>\r\n"
            + b"Date: Mon, 2 Feb 2026 10:00:00 +0000\r\n\r\n")
    return head + body + b"last line\r\n"


def normalized_lines(data):
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data).split(b"\r\n")


class Smuggling(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(listeners={
            "strict": {"mode": "starttls", "bare_lf": "reject"}})

    def send_raw(self, c, data):
        """MAIL/RCPT/DATA, then data as is (no stuffing) + '.\\r\\n'; the end reply."""
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        c.send(data + b".\r\n")
        return c.reply()

    def no_extra_replies(self, c):
        """HELP's 214 must be the very next reply: nothing smuggled was executed."""
        c.cmd("HELP", 214, "2.0.0")

    def test_normalize_one_message_each(self):
        for name, body in SMUGGLE.items():
            with self.subTest(variant=name):
                before = {m.qid for m in self.sh.queue()}
                c = self.session(self.sh)
                data = message(name, body)
                r = c.expect(self.send_raw(c, data), 250, "2.0.0")
                self.no_extra_replies(c)
                c.quit()
                new = [m for m in self.sh.queue() if m.qid not in before]
                self.assertEqual([m.qid for m in new], [r.qid],
                                 f"{name}: expected exactly one new message\n{c.dialogue()}")
                stored = new[0]
                self.assertEqual(stored.sender, "alice@example.test")
                self.assertEqual(stored.recipients, ["r@example.test"])
                at = harness.lone_cr_or_lf(stored.body)
                self.assertIsNone(at, f"{name}: lone CR/LF at {at} in {stored.body!r}")
                self.assertIn(EVIL + b"\r\n", stored.body, f"{name}: smuggled text lost")
                part = stored.client_part(FIRST)
                self.assertIsNotNone(part, stored)
                self.assertTrue(part.endswith(b"\r\nlast line\r\n"), f"{name}: {part!r}")
                if name in EXACT:
                    want = normalized_lines(data)
                    got = part.split(b"\r\n")
                    self.assertEqual(len(got), len(want), f"{name}: {got!r} vs {want!r}")
                    for g, w in zip(got, want):
                        # A "." line after a bare line end may or may not be un-stuffed.
                        if not (g == w or (w == b"." and g == b"")):
                            self.fail(f"{name}: stored line {g!r}, expected {w!r}\n{part!r}")
        self.assertFalse([m for m in self.sh.queue() if m.sender == "evil@example.test"])

    def test_reject_listener(self):
        for name, body in SMUGGLE.items():
            with self.subTest(variant=name):
                before = {m.qid for m in self.sh.queue()}
                c = self.session(self.sh, listener="strict")
                c.expect(self.send_raw(c, message(name, body)), 550, "5.6.0")
                self.no_extra_replies(c)
                # The transaction failed, not the session: a clean message goes through.
                qid = c.submit("alice@example.test", ["r@example.test"],
                               message(name + "-clean", b"clean\r\n"))
                c.quit()
                new = [m.qid for m in self.sh.queue() if m.qid not in before]
                self.assertEqual(new, [qid], f"{name}: only the clean message may be queued")

    def test_dot_stuffing_removed(self):
        content = (FIRST + b"\r\nSubject: dots\r\nMessage-ID: <dots@client.test>\r\n"
                   b"Date: Mon, 2 Feb 2026 10:00:00 +0000\r\n\r\n"
                   b".\r\n..\r\n.hidden\r\n...three\r\n .space\r\nend.\r\n.\r\n")
        for listener in ("submission", "strict"):
            with self.subTest(listener=listener):
                c = self.session(self.sh, listener=listener)
                qid = c.submit("alice@example.test", ["r@example.test"], content, stuff=True)
                c.quit()
                stored = self.sh.message(qid)
                self.assertEqual(stored.client_part(FIRST), content, stored)
        # What went over the wire had every leading dot doubled.
        self.assertIn(b"\r\n\r\n..\r\n...\r\n..hidden\r\n....three\r\n .space\r\nend.\r\n..\r\n",
                      harness.dot_stuff(content))


if __name__ == "__main__":
    harness.main()
