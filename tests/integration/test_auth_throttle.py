"""Brute-force throttling: repeated wrong passwords end in 454 4.7.0, after which even the
right password is refused while locked out. Per account (other accounts from the same
address still work) and per client address (every account from that address is refused,
the same account from another loopback address works). Nothing is asserted on timing:
failure_delay is small only to keep the test short."""

import harness
from harness import SmarthostCase, make_message

WRONG = "wrong-Password-0"


class AuthThrottle(SmarthostCase):
    def start(self, ip_failures, account_failures):
        return self.start_smarthost(
            users={"alice": "alice-Secret-1", "bob": "bob-Secret-2", "carol": "carol-Secret-3"},
            config={"auth": {"failure_delay": "50ms", "max_delay": "100ms",
                             "ip_lockout_failures": ip_failures,
                             "account_lockout_failures": account_failures,
                             "lockout_time": "1h", "failure_window": "1h"}})

    def attempt(self, sh, user, password, source=None, mech="PLAIN"):
        """One AUTH on a fresh TLS session; returns (client, reply)."""
        c = self.connect(sh, source=source)
        c.ehlo()
        c.starttls()
        c.ehlo()
        if mech == "PLAIN":
            r = c.auth_plain(user, password)
        else:
            r = c.auth_login(user, password)
        return c, r

    def fail_until_locked(self, sh, limit, users):
        """Wrong passwords (cycling over users): the first limit-1 get 535 5.7.8; 454
        4.7.0 must appear by attempt limit+1 at the latest."""
        for i in range(limit + 1):
            user = users[i % len(users)]
            c, r = self.attempt(sh, user, WRONG, mech="PLAIN" if i % 2 == 0 else "LOGIN")
            if i < limit - 1:
                c.expect(r, 535, "5.7.8")
            elif r.code == 454:
                c.expect(r, 454, "4.7.0")
                c.close()
                return i + 1
            else:
                c.expect(r, 535, "5.7.8")
            c.close()
        c.fail(f"no 454 4.7.0 after {limit + 1} failures (lockout after {limit})")

    def test_account_lockout(self):
        sh = self.start(ip_failures=1000, account_failures=3)
        self.fail_until_locked(sh, 3, ["alice"])
        # Locked: the right password is refused too, with the temporary code.
        c, r = self.attempt(sh, "alice", sh.users["alice"])
        c.expect(r, 454, "4.7.0")
        c.cmd("MAIL FROM:<alice@example.test>", 530, "5.7.0")
        c, r = self.attempt(sh, "alice", sh.users["alice"], source="127.0.0.2", mech="LOGIN")
        c.expect(r, 454, "4.7.0")   # the account is locked whatever the address
        # Another account from the same address is unaffected.
        c, r = self.attempt(sh, "bob", sh.users["bob"])
        c.expect(r, 235, "2.7.0")
        qid = c.submit("bob@example.test", ["r@example.test"], make_message("bob unaffected"))
        c.quit()
        self.assertEqual(sh.message(qid).auth_user, "bob")
        sh.wait_log(r"auth lockout.*alice")
        self.assertNotIn(WRONG, sh.log_text())

    def test_ip_lockout(self):
        sh = self.start(ip_failures=3, account_failures=1000)
        # Failures spread over accounts (one unknown): only the address is counted.
        self.fail_until_locked(sh, 3, ["alice", "nosuchuser", "bob"])
        for user in ("carol", "alice"):
            c, r = self.attempt(sh, user, sh.users[user])
            c.expect(r, 454, "4.7.0")
            c.close()
        # The same accounts from another client address are fine.
        c, r = self.attempt(sh, "carol", sh.users["carol"], source="127.0.0.2")
        c.expect(r, 235, "2.7.0")
        qid = c.submit("carol@example.test", ["r@example.test"], make_message("other address"))
        c.quit()
        stored = sh.message(qid)
        self.assertEqual(stored.auth_user, "carol")
        self.assertIn("127.0.0.2", stored.client_addr)
        c, r = self.attempt(sh, "alice", sh.users["alice"], source="127.0.0.2", mech="LOGIN")
        c.expect(r, 235, "2.7.0")
        c.quit()
        sh.wait_log(r"auth lockout.*127\.0\.0\.1")


if __name__ == "__main__":
    harness.main()
