"""Message size limits: SIZE= above max_message_size is refused at MAIL (552 5.3.4); a
message that grows past the limit while streaming is refused after its end of data
(552 5.3.4, nothing stored) and the same session then submits a normal message."""

import harness
from harness import SmarthostCase, make_message

LIMIT = 10 * 1024


class SizeLimits(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(config={"limits": {"max_message_size": "10k"}})

    def test_ehlo_advertises_limit(self):
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        self.assertEqual(c.ehlo().keywords.get("SIZE"), f"SIZE {LIMIT}")
        c.quit()

    def test_size_parameter_over_limit(self):
        c = self.session(self.sh)
        c.cmd(f"MAIL FROM:<alice@example.test> SIZE={LIMIT * 2}", 552, "5.3.4")
        c.cmd("RCPT TO:<r@example.test>", 503, "5.5.1")        # no transaction was opened
        c.cmd(f"MAIL FROM:<alice@example.test> SIZE={LIMIT // 2}", 250, "2.1.0")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        c.send(make_message("declared size ok") + b".\r\n")
        r = c.expect(c.reply(), 250, "2.0.0")
        c.quit()
        self.assertEqual(self.sh.message(r.qid).recipients, ["r@example.test"])

    def test_oversize_while_streaming_then_normal_message(self):
        before = {m.qid for m in self.sh.queue()}
        c = self.session(self.sh)
        line = b"x" * 76 + b"\r\n"
        big = make_message("too big", body=line * (3 * LIMIT // len(line)))
        c.expect(c.mail("alice@example.test", ["r@example.test"], big), 552, "5.3.4")
        # The session is still usable: a normal message is queued.
        small = make_message("small after big")
        qid = c.submit("alice@example.test", ["r2@example.test"], small)
        c.cmd("NOOP", 250, "2.0.0")
        c.quit()
        new = [m for m in self.sh.queue() if m.qid not in before]
        self.assertEqual([m.qid for m in new], [qid], "the oversize message must not be stored")
        self.assertTrue(new[0].body.endswith(small))
        self.assertEqual(new[0].recipients, ["r2@example.test"])

    def test_oversize_far_past_the_limit(self):
        """Far more than the limit (kept reading, not buffered): still 552 and usable."""
        before = {m.qid for m in self.sh.queue()}
        c = self.session(self.sh)
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        chunk = (b"y" * 998 + b"\r\n") * 64
        for _ in range(32):                     # about 2 MB, 200x the limit
            c.sock.sendall(chunk)
        c.send(b".\r\n")
        c.expect(c.reply(), 552, "5.3.4")
        c.cmd("RSET", 250, "2.0.0")
        c.quit()
        self.assertEqual({m.qid for m in self.sh.queue()}, before)


if __name__ == "__main__":
    harness.main()
