"""smarthostctl auth lockouts / auth unlock against the running daemon: failed AUTH locks
the client address and the account out (454 4.7.0), the lockout is listed with the time
left, unlocking lifts it at once (the right password works again), a second unlock finds
nothing (exit 3), and without a running daemon the command says so (exit 1)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class AuthLockouts(harness.SmarthostCase):
    def test_list_and_unlock(self):
        sh = self.start_smarthost(config={"auth": {
            "failure_delay": "1ms", "max_delay": "1ms", "ip_lockout_failures": "3",
            "account_lockout_failures": "3", "lockout_time": "1h"}})
        self.assertEqual(json.loads(sh.ctl("auth", "lockouts", "--json").stdout), [])
        c = self.connect(sh)
        c.ehlo()
        c.starttls()
        c.ehlo()
        codes = [c.cmd(f"AUTH PLAIN {harness.b64(chr(0) + 'alice' + chr(0) + 'wrong')}").code
                 for _ in range(4)]
        self.assertEqual(codes, [535, 535, 535, 454])
        locks = json.loads(sh.ctl("auth", "lockouts", "--json").stdout)
        whats = {(l["kind"], l["what"]) for l in locks}
        self.assertIn(("ip", "127.0.0.1"), whats)
        self.assertIn(("account", "alice"), whats)
        self.assertTrue(all(0 < l["left_s"] <= 3600 for l in locks))
        self.assertIn("127.0.0.1", sh.ctl("auth", "lockouts").stdout)
        # locked: even the right password is refused
        c2 = self.connect(sh)
        c2.ehlo()
        c2.starttls()
        c2.ehlo()
        r = c2.cmd(f"AUTH PLAIN {harness.b64(chr(0) + 'alice' + chr(0) + harness.DEFAULT_USERS['alice'])}")
        self.assertEqual(r.code, 454)
        sh.ctl("auth", "unlock", "127.0.0.1")
        sh.ctl("auth", "unlock", "alice")
        self.assertEqual(json.loads(sh.ctl("auth", "lockouts", "--json").stdout), [])
        c3 = self.connect(sh)
        c3.ehlo()
        c3.starttls()
        c3.ehlo()
        c3.auth_plain("alice", harness.DEFAULT_USERS["alice"])
        sh.ctl("auth", "unlock", "alice", expect=3)
        sh.ctl("auth", "unlock", "two words", expect=2)
        sh.stop()
        r = sh.ctl("auth", "lockouts", expect=1)
        self.assertIn("not answering", r.stderr)


if __name__ == "__main__":
    harness.main()
