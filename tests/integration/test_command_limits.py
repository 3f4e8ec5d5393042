"""Bounded command input: more than max_recipients (452 4.5.3, the first ones kept), a
command line longer than max_line_length (500 5.5.2, the rest of that line discarded,
the boundary exact: the limit counts CRLF), unknown commands (500 5.5.1) and, beyond
max_errors, 421 4.7.0 and the connection closed."""

import harness
from harness import SmarthostCase, make_message

MAX_RCPT = 3
MAX_LINE = 512
MAX_ERRORS = 3


class CommandLimits(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(config={"limits": {
            "max_recipients": MAX_RCPT, "max_line_length": MAX_LINE, "max_errors": MAX_ERRORS}})

    def test_too_many_recipients(self):
        c = self.session(self.sh)
        rcpts = [f"r{i}@example.test" for i in range(MAX_RCPT + 2)]
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        for i, r in enumerate(rcpts):
            if i < MAX_RCPT:
                c.cmd(f"RCPT TO:<{r}>", 250, "2.1.5")
            else:
                c.cmd(f"RCPT TO:<{r}>", 452, "4.5.3")
        c.cmd("DATA", 354)
        c.send(make_message("many rcpts") + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid
        c.quit()
        self.assertEqual(self.sh.message(qid).recipients, rcpts[:MAX_RCPT])

    def test_line_at_limit_accepted(self):
        c = self.session(self.sh)
        line = "NOOP " + "a" * (MAX_LINE - len("NOOP ") - 2)
        self.assertEqual(len(line) + 2, MAX_LINE)
        c.cmd(line, 250, "2.0.0")
        c.quit()

    def test_line_over_limit(self):
        for extra in (1, 10000):
            with self.subTest(over_by=extra):
                c = self.session(self.sh)
                line = "NOOP " + "a" * (MAX_LINE - len("NOOP ") - 2 + extra)
                c.cmd(line, 500, "5.5.2")
                # Exactly one reply for that line: the next command is answered next.
                c.cmd("HELP", 214, "2.0.0")
                c.quit()

    def test_long_mail_line_opens_no_transaction(self):
        c = self.session(self.sh)
        c.cmd("MAIL FROM:<" + "a" * MAX_LINE + "@example.test>", 500, "5.5.2")
        c.cmd("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.cmd("MAIL FROM:<alice@example.test>", 250, "2.1.0")
        c.cmd("RSET", 250, "2.0.0")
        c.quit()

    def test_unknown_commands_then_421(self):
        c = self.connect(self.sh)
        c.ehlo()
        for i in range(MAX_ERRORS):
            c.cmd(f"FROBNICATE {i}", 500, "5.5.1")
        c.cmd("XYZZY", 421, "4.7.0")
        extra = c.read_until_closed()
        self.assertEqual(extra, [], f"replies after 421:\n{c.dialogue()}")

    def test_errors_count_across_kinds_inside_tls(self):
        c = self.session(self.sh)
        c.cmd("BOGUS", 500, "5.5.1")
        c.cmd("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.cmd("MAIL FROM:<not an address>", 501)
        c.cmd("ANOTHER", 421, "4.7.0")
        self.assertEqual(c.read_until_closed(), [])


if __name__ == "__main__":
    harness.main()
