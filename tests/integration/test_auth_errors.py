"""AUTH and ordering refusals on raw dialogues: AUTH/MAIL before STARTTLS (530 5.7.0),
MAIL before AUTH (530 5.7.0), wrong password or unknown user (535 5.7.8, logged without
the password), cancel with "*" (501 5.0.0), a second AUTH (503 5.5.1), bad base64
(501 5.5.2), unknown mechanism (504 5.5.4). After each refusal the session stays usable
and nothing is queued."""

import harness
from harness import SmarthostCase, b64, make_message

WRONG = "not-the-Password-42"


class AuthErrors(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        # No lockout interference: this file is about single refusals.
        cls.sh = cls.start_class_smarthost(config={
            "auth": {"ip_lockout_failures": "1000", "account_lockout_failures": "1000"},
            "limits": {"max_errors": "100"},
        })

    def tls_session(self):
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        c.ehlo()
        return c

    def test_auth_and_mail_before_starttls(self):
        c = self.connect(self.sh)
        ehlo = c.ehlo()
        self.assertIn("STARTTLS", ehlo.keywords)
        self.assertNotIn("AUTH", ehlo.keywords, "AUTH advertised without TLS")
        # Even correct credentials are refused without TLS (never evaluated).
        c.cmd(f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + self.sh.users['alice'])}", 530, "5.7.0")
        c.cmd("AUTH LOGIN", 530, "5.7.0")
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.cmd("RCPT TO:<r@example.test>", 530, "5.7.0")
        c.cmd("DATA", 530, "5.7.0")
        c.cmd("NOOP", 250, "2.0.0")
        c.cmd("RSET", 250, "2.0.0")
        c.starttls()
        c.ehlo()
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.quit()

    def test_mail_before_auth(self):
        c = self.tls_session()
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", ["r@example.test"], make_message("after auth"))
        c.quit()
        self.assertEqual(self.sh.message(qid).auth_user, "alice")

    def test_wrong_password_plain_and_login(self):
        mark = self.sh.log_mark()
        c = self.tls_session()
        c.expect(c.auth_plain("alice", WRONG), 535, "5.7.8")
        c.expect(c.auth_plain("nosuchuser", WRONG, initial=False), 535, "5.7.8")
        c.expect(c.auth_login("alice", WRONG), 535, "5.7.8")
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        # The right password still works in the same session.
        c.expect(c.auth_login("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.quit()
        self.sh.wait_log(r"auth failed.*user=\"?alice\b.*client=\[?127\.0\.0\.1", since=mark)
        self.sh.wait_log(r"auth failed.*user=\"?nosuchuser\b", since=mark)
        self.assertNotIn(WRONG, self.sh.log_text(), "a password was written to the log")
        self.assertNotIn(b64(WRONG), self.sh.log_text(), "an AUTH payload was written to the log")

    def test_cancel(self):
        c = self.tls_session()
        c.cmd("AUTH LOGIN", 334, text=r"^VXNlcm5hbWU6$")
        c.cmd("*", 501, "5.0.0")
        c.cmd("AUTH LOGIN", 334, text=r"^VXNlcm5hbWU6$")
        c.cmd(b64("alice"), 334, text=r"^UGFzc3dvcmQ6$")
        c.cmd("*", 501, "5.0.0")
        c.cmd("AUTH PLAIN", 334)
        c.cmd("*", 501, "5.0.0")
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.quit()

    def test_second_auth(self):
        c = self.tls_session()
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.cmd(f"AUTH PLAIN {b64(chr(0) + 'bob' + chr(0) + self.sh.users['bob'])}", 503, "5.5.1")
        c.cmd("AUTH LOGIN", 503, "5.5.1")
        qid = c.submit("alice@example.test", ["r@example.test"], make_message("still alice"))
        c.quit()
        self.assertEqual(self.sh.message(qid).auth_user, "alice")

    def test_bad_base64(self):
        c = self.tls_session()
        c.cmd("AUTH PLAIN !!!not*base64!!!", 501, "5.5.2")
        c.cmd("AUTH LOGIN", 334)
        c.cmd("%%%%", 501, "5.5.2")
        c.cmd("AUTH PLAIN", 334)
        c.cmd("@@@@", 501, "5.5.2")
        c.expect(c.auth_plain("bob", self.sh.users["bob"]), 235, "2.7.0")
        c.quit()

    def test_unknown_mechanism(self):
        c = self.tls_session()
        c.cmd("AUTH XOAUTH9", 504, "5.5.4")
        # Only PLAIN and LOGIN: the store holds yescrypt hashes, not shared secrets.
        c.cmd("AUTH CRAM-MD5", 504, "5.5.4")
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        c.quit()

    def test_nothing_queued_by_refusals(self):
        """Refused sessions leave no trace in the queue."""
        before = {m.qid for m in self.sh.queue()}
        c = self.tls_session()
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.cmd("RCPT TO:<r@example.test>", (503, 530))
        c.cmd("DATA", (503, 530))
        c.quit()
        self.assertEqual({m.qid for m in self.sh.queue()}, before)


if __name__ == "__main__":
    harness.main()
