"""Per-account policy and quotas with real clients: sender not allowed (553 5.7.1 at MAIL),
header From not allowed (553 at end of data), outside the account's networks and disabled
accounts (535 5.7.8, like a wrong password), per-account recipients (452 4.5.3) and size
(552 5.3.4), each quota (hourly, daily, recipients, bytes: 452 4.2.2 naming it) and its
reset, a change made with smarthostctl applying to the next transaction of an open session,
two sessions racing for the last message of a quota, and smarthostctl's round trips and
errors."""

import json
import os
import smtplib
import ssl
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PW = "ricoh-Secret-7"


class AccountsPolicy(harness.SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(users={})

    def setUp(self):
        self.name = f"dev{self._testMethodName[-12:].replace('_', '')}"[:30]
        self.sh.add_user(self.name, PW)
        self.addCleanup(self.sh.ctl, "user", "del", self.name, expect=None)

    def ctl(self, *args, expect=0):
        return self.sh.ctl(*args, expect=expect)

    def smtp(self):
        s = smtplib.SMTP("127.0.0.1", self.sh.ports["submission"], timeout=harness.IO_TIMEOUT)
        self.addCleanup(lambda: s.close())
        s.starttls(context=self.sh.client_context())
        s.login(self.name, PW)
        return s

    def send(self, s, sender="scan@example.test", rcpts=("a@example.test",), body=None,
             header_from=None):
        msg = harness.make_message("policy", sender=header_from or sender, to=rcpts[0],
                                   body=body or "hello\r\n")
        try:
            refused = s.sendmail(sender, list(rcpts), msg)
            if refused:  # some recipients refused, the message went to the others
                code, text = list(refused.values())[0]
                return (code, text.decode())
            return (250, "")
        except smtplib.SMTPSenderRefused as e:
            return (e.smtp_code, e.smtp_error.decode())
        except smtplib.SMTPRecipientsRefused as e:
            code, text = list(e.recipients.values())[0]
            return (code, text.decode())
        except smtplib.SMTPDataError as e:
            return (e.smtp_code, e.smtp_error.decode())

    # ---- refusals ----
    def test_sender_and_header_from(self):
        self.ctl("user", "set", self.name, "--senders", "scan@example.test, @printers.test")
        s = self.smtp()
        self.assertEqual(self.send(s)[0], 250)
        self.assertEqual(self.send(s, sender="mfp@printers.test")[0], 250)
        code, text = self.send(s, sender="ceo@example.test")
        self.assertEqual(code, 553)
        self.assertIn("5.7.1", text)
        self.assertIn("not allowed", text)
        self.ctl("user", "set", self.name, "--check-header-from", "yes")
        # the header From is checked at the end of data, with fresh data
        code, text = self.send(s, header_from="ceo@example.test")
        self.assertEqual(code, 553)
        self.assertIn("Header From", text)
        self.assertEqual(self.send(s, header_from="scan@example.test")[0], 250)

    def test_change_applies_to_the_next_transaction(self):
        s = self.smtp()
        self.assertEqual(self.send(s)[0], 250)
        self.ctl("user", "set", self.name, "--senders", "other@example.test")
        code, text = self.send(s)  # same session: refused when it commits
        self.assertEqual(code, 553)
        self.assertIn("5.7.1", text)

    def test_networks_and_disabled_refused_like_a_wrong_password(self):
        self.ctl("user", "set", self.name, "--networks", "192.0.2.0/24")
        c = self.connect(self.sh)
        c.ehlo()
        c.starttls()
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {harness.b64(chr(0) + self.name + chr(0) + PW)}")
        self.assertEqual((r.code, r.enhanced), (535, "5.7.8"))
        wrong = c.cmd(f"AUTH PLAIN {harness.b64(chr(0) + self.name + chr(0) + 'nope')}")
        self.assertEqual(r.lines, wrong.lines, "the same answer as a wrong password")
        self.ctl("user", "set", self.name, "--networks", "127.0.0.0/8, ::1/128")
        self.smtp().quit()
        self.ctl("user", "disable", self.name)
        with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
            self.smtp()
        self.assertEqual(e.exception.smtp_code, 535)

    def test_account_size_and_recipient_limits(self):
        self.ctl("quota", "set", self.name, "--max-rcpts", "2", "--max-size", "2k")
        s = self.smtp()
        code, text = self.send(s, rcpts=("a@example.test", "b@example.test", "c@example.test"))
        self.assertEqual(code, 452)
        self.assertIn("4.5.3", text)
        code, text = self.send(s, body="x" * 4000 + "\r\n")
        self.assertEqual(code, 552)
        self.assertIn("5.3.4", text)
        s.ehlo()
        code, text = s.mail("scan@example.test", ["size=5000"])
        self.assertEqual(code, 552)
        s.rset()

    def test_cached_logins_follow_password_disable_and_delete(self):
        global PW
        for _ in range(3):  # the second and third logins come from the cache
            self.smtp().quit()
        s = smtplib.SMTP("127.0.0.1", self.sh.ports["submission"], timeout=harness.IO_TIMEOUT)
        self.addCleanup(s.close)
        s.starttls(context=self.sh.client_context())
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            s.login(self.name, PW + "x")  # a wrong password never passes for a cached one
        s.close()
        self.ctl("user", "set", self.name, "--networks", "192.0.2.0/24")
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            self.smtp()  # outside the account's networks now, cached or not
        self.ctl("user", "set", self.name, "--networks", "127.0.0.0/8, ::1/128")
        self.smtp().quit()
        self.sh.ctl("user", "passwd", self.name, "--password-stdin", input="new-Secret-8\n")
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            self.smtp()  # the old password, verified a moment ago, no longer works
        s = smtplib.SMTP("127.0.0.1", self.sh.ports["submission"], timeout=harness.IO_TIMEOUT)
        self.addCleanup(s.close)
        s.starttls(context=self.sh.client_context())
        s.login(self.name, "new-Secret-8")
        s.quit()
        old, PW = PW, "new-Secret-8"
        try:
            self.smtp().quit()
            self.ctl("user", "disable", self.name)
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                self.smtp()
            self.ctl("user", "enable", self.name)
            self.smtp().quit()
            self.ctl("user", "del", self.name)
            with self.assertRaises(smtplib.SMTPAuthenticationError):
                self.smtp()
        finally:
            PW = old

    # ---- quotas ----
    def test_hourly_quota_and_reset(self):
        self.ctl("quota", "set", self.name, "--msgs-per-hour", "2")
        s = self.smtp()
        self.assertEqual(self.send(s)[0], 250)
        self.assertEqual(self.send(s)[0], 250)
        code, text = self.send(s)
        self.assertEqual(code, 452)
        self.assertIn("4.2.2", text)
        self.assertIn("Hourly message quota", text)
        self.assertIn("resets at", text)
        info = json.loads(self.ctl("quota", "show", self.name, "--json").stdout)
        self.assertEqual(info["limits"]["msgs_per_hour"]["used"], 2, "refused ones not counted")
        s.close()
        self.sh.stop()
        self.sh.start()  # counters survive a restart
        s = self.smtp()
        self.assertEqual(self.send(s)[0], 452)
        self.ctl("quota", "reset", self.name, "--hour")
        self.assertEqual(self.send(s)[0], 250)

    def test_daily_quotas(self):
        s = self.smtp()
        self.ctl("quota", "set", self.name, "--msgs-per-day", "1")
        self.assertEqual(self.send(s)[0], 250)
        code, text = self.send(s)
        self.assertEqual(code, 452)
        self.assertIn("Daily message quota", text)
        self.ctl("quota", "set", self.name, "--msgs-per-day", "0", "--rcpts-per-day", "3")
        self.ctl("quota", "reset", self.name)
        self.assertEqual(self.send(s, rcpts=("a@x.test", "b@x.test"))[0], 250)
        code, text = self.send(s, rcpts=("c@x.test", "d@x.test"))
        self.assertEqual(code, 452)
        self.assertIn("Daily recipient quota", text)
        self.ctl("quota", "set", self.name, "--rcpts-per-day", "default", "--bytes-per-day", "3k")
        self.ctl("quota", "reset", self.name)
        self.assertEqual(self.send(s, body="y" * 1500 + "\r\n")[0], 250)
        code, text = self.send(s, body="y" * 1500 + "\r\n")
        self.assertEqual(code, 452)
        self.assertIn("Daily volume quota", text)

    def test_racing_sessions_never_exceed_a_quota(self):
        self.ctl("quota", "set", self.name, "--msgs-per-hour", "1")
        clients = []
        for _ in range(2):
            c = self.connect(self.sh)
            c.ehlo()
            c.starttls()
            c.ehlo()
            c.auth_plain(self.name, PW)
            c.cmd("MAIL FROM:<scan@example.test>", 250)
            c.cmd("RCPT TO:<a@example.test>", 250)
            c.cmd("DATA", 354)
            c.send(harness.make_message("race"))
            clients.append(c)
        results = [None, None]
        go = threading.Barrier(2)

        def finish(i):
            go.wait()
            clients[i].send(b".\r\n")
            results[i] = clients[i].reply()
        threads = [threading.Thread(target=finish, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(harness.DEADLINE)
        codes = sorted(r.code for r in results)
        self.assertEqual(codes, [250, 452], [r.lines for r in results])
        info = json.loads(self.ctl("quota", "show", self.name, "--json").stdout)
        self.assertEqual(info["limits"]["msgs_per_hour"]["used"], 1)

    # ---- smarthostctl ----
    def test_smarthostctl_round_trip_and_errors(self):
        name = "roundtrip-printer"
        r = self.ctl("user", "add", name, "--generate", "--description", "3rd floor Ricoh",
                     "--senders", "mfp@example.test", "--networks", "127.0.0.0/8",
                     "--owner", "it@example.test", "--msgs-per-day", "50")
        self.addCleanup(self.sh.ctl, "user", "del", name, expect=None)
        self.assertIn("Password", r.stdout)
        shown = json.loads(self.ctl("user", "show", name, "--json").stdout)
        self.assertEqual((shown["senders"], shown["networks"], shown["owner"]),
                         ("mfp@example.test", "127.0.0.0/8", "it@example.test"))
        self.assertEqual(shown["limits"]["msgs_per_day"]["limit"], 50)
        self.ctl("user", "set", name, "--msgs-per-day", "default", "--senders", "")
        listed = json.loads(self.ctl("user", "list", "--json").stdout)
        entry = [e for e in listed if e["name"] == name][0]
        self.assertEqual(entry["msgs_per_day"], 0)
        self.assertEqual(entry["msgs_today"], 0)
        # errors: unknown user, malformed address or CIDR, negative quota, bad option
        self.assertIn("no account", self.ctl("user", "set", "ghost", "--max-rcpts", "3",
                                             expect=3).stderr)
        self.assertIn("not an address", self.ctl("user", "set", name, "--senders",
                                                 "nobody", expect=2).stderr)
        self.assertIn("not a network", self.ctl("user", "set", name, "--networks",
                                                "10.0.0.0/40", expect=2).stderr)
        self.ctl("quota", "set", name, "--msgs-per-hour", "-1", expect=2)
        self.ctl("quota", "set", name, "--senders", "a@b.test", expect=2)
        self.ctl("quota", "show", "ghost", expect=3)
        self.ctl("user", "add", "bad-policy", "--password-stdin", "--networks", "x",
                 expect=2)
        self.ctl("user", "show", "bad-policy", expect=3)  # nothing half-created
        self.ctl("user", "del", name)
        self.ctl("user", "show", name, expect=3)


if __name__ == "__main__":
    harness.main()
