"""A plain listener for legacy devices on a trusted network (mode = plain,
allow_plaintext_auth = yes): no STARTTLS offered, AUTH offered and accepted without TLS,
the message queued with a Received header saying ESMTPA and no TLS. Every other listener
still refuses AUTH without TLS."""

import re

import harness
from harness import SmarthostCase, make_message


class PlaintextListener(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(listeners={
            "lan": {"mode": "plain", "allow_plaintext_auth": "yes"}})

    def test_auth_without_tls(self):
        c = self.connect(self.sh, "lan")
        c.expect(c.greeting, 220)
        ehlo = c.ehlo()
        self.assertNotIn("STARTTLS", ehlo.keywords)
        self.assertIn("AUTH", ehlo.keywords)
        c.cmd("STARTTLS", (502, 503), "5.5.1")
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c.expect(c.auth_login("alice", self.sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", ["lan@example.test"], make_message("plain lan"))
        c.quit()
        msg = self.sh.message(qid)
        self.assertEqual(msg.auth_user, "alice")
        received = msg.headers()[0]
        self.assertEqual(received[0], "Received")
        self.assertRegex(received[1], rf"^from client\.test \(\[127\.0\.0\.1\]\) by "
                                      rf"{re.escape(self.sh.hostname)} \(smarthost\) with ESMTPA "
                                      rf"\(authenticated as alice\) id {qid}; ")
        self.assertNotIn("TLS", received[1])

    def test_starttls_listener_still_requires_tls(self):
        c = self.connect(self.sh, "submission")
        self.assertNotIn("AUTH", c.ehlo().keywords)
        c.cmd("AUTH LOGIN", 530, "5.7.0")
        c.quit()


if __name__ == "__main__":
    harness.main()
