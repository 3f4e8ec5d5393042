"""Real submission clients against the STARTTLS listener, each verifying our certificate:
swaks (AUTH LOGIN and AUTH PLAIN), curl (smtp:// --ssl-reqd, both mechanisms) and msmtp
(tls + tls_starttls + tls_trust_file). Each message must be queued with the envelope the
tool sent, the authenticated user and our Received header."""

import os
import re
import shutil

import harness
from harness import SmarthostCase, make_message, run_tool

QUEUED_RE = re.compile(r"250[ -]2\.0\.0 Ok: queued as ([0-9A-Za-z]{15})\b")


class RealClients(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost()

    def require(self, tool):
        if shutil.which(tool) is None:
            self.fail(f"{tool} is not installed (tests/run installs it)")

    def queued(self, r, tool):
        """The queue id the tool printed in its protocol trace."""
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 0, f"{tool} failed:\n{out}")
        ids = QUEUED_RE.findall(out)
        self.assertEqual(len(ids), 1, f"expected one 'queued as' in {tool} output:\n{out}")
        return ids[0]

    def check(self, qid, user, sender, rcpts, subject):
        msg = self.sh.message(qid)
        self.assertEqual(msg.sender, sender)
        self.assertEqual(msg.recipients, rcpts)
        self.assertEqual(msg.auth_user, user)
        self.assertEqual(msg.state, "queued")
        self.assertIn(f"Subject: {subject}".encode(), msg.body)
        self.assertIsNone(harness.lone_cr_or_lf(msg.body), msg.body)
        self.assert_received(self.sh, msg, qid, user, helo=msg.helo)
        self.assertEqual(len(msg.header_values("Message-ID")), 1, msg)
        self.assertEqual(len(msg.header_values("Date")), 1, msg)
        return msg

    def swaks(self, mech, user):
        self.require("swaks")
        subject = f"swaks {mech}"
        r = run_tool(["swaks", "--server", "127.0.0.1", "--port", str(self.sh.ports["submission"]),
                      "--helo", "swaks.client.test", "--tls", "--tls-verify",
                      "--tls-ca-path", self.sh.cert, "--auth", mech, "--auth-user", user,
                      "--auth-password", self.sh.users[user],
                      "--from", f"{user}@example.test", "--to", "swaks-rcpt@example.test",
                      "--header", f"Subject: {subject}", "--body", "Sent by swaks.",
                      "--timeout", "60"])
        qid = self.queued(r, "swaks")
        self.assertRegex(r.stdout, r"<~\s+235 2\.7\.0", "AUTH reply missing in swaks output")
        msg = self.check(qid, user, f"{user}@example.test", ["swaks-rcpt@example.test"], subject)
        self.assertEqual(msg.helo, "swaks.client.test")

    def test_swaks_auth_login(self):
        self.swaks("LOGIN", "alice")

    def test_swaks_auth_plain(self):
        self.swaks("PLAIN", "bob")

    def curl(self, mech, user):
        self.require("curl")
        subject = f"curl {mech}"
        path = os.path.join(self.sh.dir, f"curl-{mech}.eml")
        with open(path, "wb") as f:
            f.write(make_message(subject, sender=f"{user}@example.test", to="c1@example.test"))
        r = run_tool(["curl", "--silent", "--show-error", "--verbose",
                      f"smtp://127.0.0.1:{self.sh.ports['submission']}/curl.client.test",
                      "--ssl-reqd", "--cacert", self.sh.cert,
                      "--user", f"{user}:{self.sh.users[user]}",
                      "--login-options", f"AUTH={mech}", "--mail-from", f"{user}@example.test",
                      "--mail-rcpt", "c1@example.test", "--mail-rcpt", "c2@example.test",
                      "--upload-file", path, "--max-time", "60"])
        qid = self.queued(r, "curl")
        self.assertRegex(r.stderr, rf"< 235 2\.7\.0", "AUTH reply missing in curl output")
        self.assertRegex(r.stderr, rf"> AUTH {mech}\b", f"curl did not use AUTH {mech}")
        msg = self.check(qid, user, f"{user}@example.test", ["c1@example.test", "c2@example.test"],
                         subject)
        self.assertEqual(msg.helo, "curl.client.test")

    def test_curl_auth_plain(self):
        self.curl("PLAIN", "alice")

    def test_curl_auth_login(self):
        self.curl("LOGIN", "bob")

    def test_msmtp(self):
        self.require("msmtp")
        rc = os.path.join(self.sh.dir, "msmtprc")
        with open(rc, "w") as f:
            f.write("\n".join([
                "defaults",
                "tls on",
                "tls_starttls on",
                f"tls_trust_file {self.sh.cert}",
                "timeout 60",
                "account test",
                "host 127.0.0.1",
                f"port {self.sh.ports['submission']}",
                "domain msmtp.client.test",
                "auth plain",
                "user alice",
                f"password {self.sh.users['alice']}",
                "from alice@example.test",
                "account default : test",
                "",
            ]))
        os.chmod(rc, 0o600)   # msmtp refuses a password file others can read
        subject = "msmtp"
        r = run_tool(["msmtp", "-C", rc, "--debug", "m1@example.test"],
                     input=make_message(subject, to="m1@example.test").decode())
        qid = self.queued(r, "msmtp")
        msg = self.check(qid, "alice", "alice@example.test", ["m1@example.test"], subject)
        self.assertEqual(msg.helo, "msmtp.client.test")


if __name__ == "__main__":
    harness.main()
