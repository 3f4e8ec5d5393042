"""The implicit TLS listener (port 465 style, RFC 8314): TLS from the first byte, greeting
only after the handshake, no STARTTLS offered, AUTH offered at once. Driven by
smtplib.SMTP_SSL, curl smtps:// and a raw TLS dialogue; each message must be queued."""

import os
import re
import smtplib
import socket

import harness
from harness import SmarthostCase, make_message, run_tool


class ImplicitTls(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost()

    def test_smtplib_smtp_ssl(self):
        s = smtplib.SMTP_SSL("127.0.0.1", self.sh.ports["submissions"],
                             local_hostname="client.test", context=self.sh.client_context(),
                             timeout=harness.IO_TIMEOUT)
        self.addCleanup(s.close)
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        self.assertFalse(s.has_extn("starttls"), "STARTTLS offered inside implicit TLS")
        self.assertTrue(s.has_extn("auth"), s.esmtp_features)
        code, msg = s.login("alice", self.sh.users["alice"])
        self.assertEqual((code, msg[:5]), (235, b"2.7.0"))
        data = make_message("smtps via smtplib")
        code, msg = s.mail("alice@example.test")
        self.assertEqual((code, msg[:5]), (250, b"2.1.0"))
        code, msg = s.rcpt("r465@example.test")
        self.assertEqual((code, msg[:5]), (250, b"2.1.5"))
        code, msg = s.data(data)
        self.assertEqual((code, msg[:5]), (250, b"2.0.0"), msg)
        qid = re.search(rb"queued as ([0-9A-Za-z]{15})\b", msg).group(1).decode()
        s.quit()
        stored = self.sh.message(qid)
        self.assertEqual(stored.recipients, ["r465@example.test"])
        self.assertEqual(stored.auth_user, "alice")
        self.assert_received(self.sh, stored, qid, "alice", tls=r"TLS1\.3")
        self.assertTrue(stored.body.endswith(data))

    def test_curl_smtps(self):
        path = os.path.join(self.sh.dir, "curl465.eml")
        with open(path, "wb") as f:
            f.write(make_message("smtps via curl", sender="bob@example.test"))
        r = run_tool(["curl", "--silent", "--show-error", "--verbose",
                      f"smtps://127.0.0.1:{self.sh.ports['submissions']}/curl.client.test",
                      "--cacert", self.sh.cert, "--user", f"bob:{self.sh.users['bob']}",
                      "--mail-from", "bob@example.test", "--mail-rcpt", "c465@example.test",
                      "--upload-file", path, "--max-time", "60"])
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, out)
        ids = re.findall(r"250 2\.0\.0 Ok: queued as ([0-9A-Za-z]{15})\b", out)
        self.assertEqual(len(ids), 1, out)
        stored = self.sh.message(ids[0])
        self.assertEqual(stored.sender, "bob@example.test")
        self.assertEqual(stored.recipients, ["c465@example.test"])
        self.assert_received(self.sh, stored, ids[0], "bob", helo="curl.client.test")

    def test_raw_dialogue(self):
        c = self.connect(self.sh, "submissions")
        c.expect(c.greeting, 220)
        self.assertEqual(c.tls_version(), "TLSv1.3")
        ehlo = c.ehlo()
        self.assertNotIn("STARTTLS", ehlo.keywords)
        self.assertIn("AUTH", ehlo.keywords)
        c.cmd("STARTTLS", (502, 503), "5.5.1")
        c.expect(c.auth_plain("alice", self.sh.users["alice"]), 235, "2.7.0")
        qid = c.submit("alice@example.test", ["raw465@example.test"], make_message("raw 465"))
        c.quit()
        self.assertEqual(self.sh.message(qid).recipients, ["raw465@example.test"])

    def test_plaintext_on_implicit_port_gets_no_greeting(self):
        """A client speaking plaintext to port 465 never gets an SMTP greeting (the
        server waits for a ClientHello); sending text makes it drop the connection."""
        s = socket.create_connection(("127.0.0.1", self.sh.ports["submissions"]),
                                     timeout=harness.IO_TIMEOUT)
        self.addCleanup(s.close)
        s.sendall(b"EHLO plain.client.test\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        self.assertFalse(data.startswith(b"220"), f"plaintext greeting on the TLS port: {data!r}")
        self.assertFalse(b"250" in data, data)


if __name__ == "__main__":
    harness.main()
