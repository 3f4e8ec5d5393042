"""Envelope refusals inside an authenticated TLS session, each with its enhanced code, and
none of them leaving anything in the queue: MAIL syntax (501 5.1.7), unknown MAIL
parameter (555 5.5.4), nested MAIL (503 5.5.1), RCPT before MAIL (503 5.5.1), bad
recipient (501 5.1.3), DATA without a recipient (503 5.5.1), then a normal transaction."""

import harness
from harness import SmarthostCase, make_message


class EnvelopeErrors(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(config={"limits": {"max_errors": 50}})

    def test_refusals_then_success(self):
        before = {m.qid for m in self.sh.queue()}
        c = self.session(self.sh)
        c.cmd("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.cmd("DATA", 503, "5.5.1")
        c.cmd("MAIL FROM:<alice@@example.test>", 501, "5.1.7")
        c.cmd("MAIL FROM:<alice@example.test> FROBNICATE=yes", 555, "5.5.4")
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("MAIL FROM:<alice@example.test>", 503, "5.5.1")
        c.cmd("DATA", 503, "5.5.1")
        c.cmd("RCPT TO:<bad@@example.test>", 501, "5.1.3")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        c.send(make_message("after refusals") + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid
        c.quit()
        self.assertEqual([m.qid for m in self.sh.queue() if m.qid not in before], [qid])
        self.assertEqual(self.sh.message(qid).recipients, ["r@example.test"])

    def test_rset_clears_the_transaction(self):
        before = {m.qid for m in self.sh.queue()}
        c = self.session(self.sh)
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<gone@example.test>", 250, "2.1.5")
        c.cmd("RSET", 250, "2.0.0")
        c.cmd("DATA", 503, "5.5.1")
        c.cmd("RCPT TO:<r@example.test>", 503, "5.5.1")
        qid = c.submit("alice@example.test", ["kept@example.test"], make_message("after RSET"))
        c.quit()
        new = [m for m in self.sh.queue() if m.qid not in before]
        self.assertEqual([m.qid for m in new], [qid])
        self.assertEqual(new[0].recipients, ["kept@example.test"])

    def test_null_sender_and_size_parameter(self):
        c = self.session(self.sh)
        c.cmd("MAIL FROM:<> SIZE=100 BODY=8BITMIME", 250, "2.1.0")
        c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
        c.cmd("DATA", 354)
        c.send(make_message("null sender", body="caf\xe9 8-bit\r\n".encode("latin-1")) + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid
        c.quit()
        stored = self.sh.message(qid)
        self.assertEqual(stored.sender, "")
        self.assertIn(b"caf\xe9 8-bit\r\n", stored.body)


if __name__ == "__main__":
    harness.main()
