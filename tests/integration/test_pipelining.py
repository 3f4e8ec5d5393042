"""PIPELINING (RFC 2920): commands sent in one write are answered in order, one reply
each. A group with one bad RCPT stores one message for the good recipients only; a group
where every RCPT fails gets 554 5.5.1 at DATA; commands pipelined after the end of data
start the next transaction; a large group (more than one read buffer) loses nothing.
The client's end of input (a FIN, or TLS close_notify in the same read as its last
commands) while a message is being stored or a password checked: everything before it
is still answered, in order, and then the connection closes."""

import socket
import ssl

import harness
from harness import SmarthostCase, dot_stuff, make_message


class HalfClosingTls:
    """A TLS client over a socket through memory BIOs, as much of a socket as
    harness.Client uses: sendall, recv, settimeout, close; and close_notify(), which
    sends ours and leaves reading as it was."""

    def __init__(self, sock, context, server_hostname):
        self.sock = sock
        self.saw_close_notify = False
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing,
                                    server_hostname=server_hostname)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._send_pending()
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the TLS handshake")
                self.incoming.write(data)
        self._send_pending()

    def _send_pending(self):
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def version(self):
        return self.tls.version()

    def cipher(self):
        return self.tls.cipher()

    def sendall(self, data):
        self.tls.write(data)
        self._send_pending()

    def close_notify(self):
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:  # ours is out; the server's is not in yet
            pass
        self._send_pending()

    def recv(self, n):
        while True:
            try:
                data = self.tls.read(n)
                if not data:  # Python reads the server's close_notify as b""
                    self.saw_close_notify = True
                return data
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:  # the server's close_notify
                self.saw_close_notify = True
                return b""

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def close(self):
        self.sock.close()


class Pipelining(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(config={"limits": {"max_recipients": 100}})

    def replies(self, c, n):
        return [c.reply() for _ in range(n)]

    def expect_all(self, c, replies, wanted):
        for r, (code, enh) in zip(replies, wanted):
            c.expect(r, code, enh)

    def test_group_with_one_bad_rcpt(self):
        before = {m.qid for m in self.sh.queue()}
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        self.assertIn("PIPELINING", c.ehlo().keywords)
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<good1@example.test>\r\n"
               b"RCPT TO:<bad@@example.test>\r\nRCPT TO:<good2@example.test>\r\nDATA\r\n")
        self.expect_all(c, self.replies(c, 5), [(250, "2.1.0"), (250, "2.1.5"), (501, "5.1.3"),
                                                (250, "2.1.5"), (354, None)])
        c.send(dot_stuff(make_message("pipelined")) + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid
        c.quit()
        new = [m for m in self.sh.queue() if m.qid not in before]
        self.assertEqual([m.qid for m in new], [qid])
        self.assertEqual(new[0].recipients, ["good1@example.test", "good2@example.test"])

    def test_group_where_every_rcpt_fails(self):
        before = {m.qid for m in self.sh.queue()}
        c = self.session(self.sh)
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bad@@example.test>\r\n"
               b"RCPT TO:<>\r\nDATA\r\n")
        r = self.replies(c, 4)
        self.expect_all(c, r, [(250, "2.1.0"), (501, None), (501, None), (554, "5.5.1")])
        # DATA was refused: what follows is a command, not message content.
        c.cmd("NOOP", 250, "2.0.0")
        c.cmd("RSET", 250, "2.0.0")
        c.quit()
        self.assertEqual({m.qid for m in self.sh.queue()}, before)

    def test_transactions_back_to_back(self):
        c = self.session(self.sh)
        first = make_message("first of two")
        second = make_message("second of two")
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<a1@example.test>\r\nDATA\r\n")
        self.expect_all(c, self.replies(c, 3), [(250, "2.1.0"), (250, "2.1.5"), (354, None)])
        # End of data, then the next transaction's commands, in the same write.
        c.send(dot_stuff(first) + b".\r\nMAIL FROM:<alice@example.test>\r\n"
               b"RCPT TO:<a2@example.test>\r\nDATA\r\n")
        r = self.replies(c, 4)
        self.expect_all(c, r, [(250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (354, None)])
        c.send(dot_stuff(second) + b".\r\nQUIT\r\n")
        r2 = c.expect(c.reply(), 250, "2.0.0")
        c.expect(c.reply(), 221, "2.0.0")
        c.read_until_closed()
        m1, m2 = self.sh.message(r[0].qid), self.sh.message(r2.qid)
        self.assertEqual(m1.recipients, ["a1@example.test"])
        self.assertEqual(m2.recipients, ["a2@example.test"])
        self.assertTrue(m1.body.endswith(first))
        self.assertTrue(m2.body.endswith(second))

    def half_close(self, c):
        """Our end of input, TLS left as it is: the FIN after the last command."""
        c.note("shutdown(SHUT_WR)")
        socket.socket.shutdown(c.sock, socket.SHUT_WR)

    def half_closing_session(self):
        """An authenticated session whose TLS can send close_notify and still read the
        replies (Python's SSLSocket.unwrap would wait for the server's close_notify and
        fail on the replies in between)."""
        c = self.connect(self.sh)
        c.ehlo()
        c.cmd("STARTTLS", 220, "2.0.0")
        c.sock = HalfClosingTls(c.sock, self.sh.client_context(), c.server_hostname)
        c.note(f"tls {c.sock.version()} {c.sock.cipher()[0]}")
        c.ehlo()
        return c

    def close_notify(self, c):
        """Our end of input as TLS says it: close_notify after the last command, in
        the same burst; the socket stays open for the replies."""
        c.note("close_notify")
        c.sock.close_notify()

    def test_quit_ends_tls_with_close_notify(self):
        """After 221 the server ends TLS properly: its close_notify (sent with the 221)
        comes before the TCP end, so the client sees a clean end, not a truncation."""
        c = self.half_closing_session()
        c.cmd("QUIT", 221, "2.0.0")
        self.assertEqual(c.read_until_closed(), [])
        self.assertTrue(c.sock.saw_close_notify, f"no close_notify after 221:\n{c.dialogue()}")

    def test_end_of_input_during_the_commit(self):
        """The message, QUIT and the client's FIN arrive while the message is being
        stored: the 250 and the 221 still come, in order, and then the close."""
        c = self.session(self.sh)
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<fin@example.test>\r\nDATA\r\n")
        self.expect_all(c, self.replies(c, 3), [(250, "2.1.0"), (250, "2.1.5"), (354, None)])
        body = make_message("then QUIT and FIN")
        c.send(dot_stuff(body) + b".\r\nQUIT\r\n")
        self.half_close(c)
        r = c.read_until_closed()
        self.assertEqual([x.code for x in r], [250, 221], c.dialogue())
        self.assertTrue(self.sh.message(r[0].qid).body.endswith(body))

    def test_end_of_input_without_quit(self):
        """FIN right after the end of data, no QUIT: the message is stored and
        answered, and then the connection closes."""
        c = self.session(self.sh)
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<fin2@example.test>\r\nDATA\r\n")
        self.expect_all(c, self.replies(c, 3), [(250, "2.1.0"), (250, "2.1.5"), (354, None)])
        body = make_message("then FIN")
        c.send(dot_stuff(body) + b".\r\n")
        self.half_close(c)
        r = c.read_until_closed()
        self.assertEqual([x.code for x in r], [250], c.dialogue())
        self.assertTrue(self.sh.message(r[0].qid).body.endswith(body))

    def test_close_notify_during_the_commit(self):
        """The message, QUIT and close_notify in one burst, while the message is
        being stored: the 250 and the 221 still come."""
        c = self.half_closing_session()
        c.auth_plain("alice", self.sh.users["alice"])
        c.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<cn@example.test>\r\nDATA\r\n")
        self.expect_all(c, self.replies(c, 3), [(250, "2.1.0"), (250, "2.1.5"), (354, None)])
        body = make_message("then QUIT and close_notify")
        c.send(dot_stuff(body) + b".\r\nQUIT\r\n")
        self.close_notify(c)
        r = c.read_until_closed()
        self.assertEqual([x.code for x in r], [250, 221], c.dialogue())
        self.assertTrue(self.sh.message(r[0].qid).body.endswith(body))

    def test_close_notify_with_the_last_commands(self):
        """NOOP and QUIT, then close_notify, no job in between: both answered."""
        c = self.half_closing_session()
        c.send(b"NOOP\r\nQUIT\r\n")
        self.close_notify(c)
        r = c.read_until_closed()
        self.assertEqual([(x.code, x.enhanced) for x in r], [(250, "2.0.0"), (221, "2.0.0")],
                         c.dialogue())

    def test_close_notify_after_auth(self):
        """Commands and close_notify right behind AUTH: answered once the password is
        checked."""
        c = self.half_closing_session()
        token = harness.b64(f"\0alice\0{self.sh.users['alice']}")
        c.send(f"AUTH PLAIN {token}\r\nNOOP\r\nQUIT\r\n")
        self.close_notify(c)
        r = c.read_until_closed()
        self.assertEqual([(x.code, x.enhanced) for x in r],
                         [(235, "2.7.0"), (250, "2.0.0"), (221, "2.0.0")], c.dialogue())

    def test_pipelined_after_auth(self):
        """Commands and the FIN right behind AUTH, while the password is being checked:
        answered in order once it is."""
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        c.ehlo()
        token = harness.b64(f"\0alice\0{self.sh.users['alice']}")
        c.send(f"AUTH PLAIN {token}\r\nMAIL FROM:<alice@example.test>\r\n"
               "RCPT TO:<after-auth@example.test>\r\nQUIT\r\n")
        self.half_close(c)
        r = c.read_until_closed()
        self.assertEqual([(x.code, x.enhanced) for x in r],
                         [(235, "2.7.0"), (250, "2.1.0"), (250, "2.1.5"), (221, "2.0.0")],
                         c.dialogue())

    def test_large_group(self):
        """80 RCPTs in one write (several KB, beyond one command line buffer)."""
        c = self.session(self.sh)
        rcpts = [f"rcpt-{i:03d}-{'x' * 40}@example.test" for i in range(80)]
        c.send(b"RSET\r\nMAIL FROM:<alice@example.test>\r\n"
               + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n")
        r = self.replies(c, 2 + len(rcpts) + 1)
        self.expect_all(c, r, [(250, "2.0.0"), (250, "2.1.0")] + [(250, "2.1.5")] * len(rcpts)
                        + [(354, None)])
        c.send(dot_stuff(make_message("large group")) + b".\r\n")
        qid = c.expect(c.reply(), 250, "2.0.0").qid
        c.quit()
        self.assertEqual(self.sh.message(qid).recipients, rcpts)


if __name__ == "__main__":
    harness.main()
