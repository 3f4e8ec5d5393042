"""Process lifecycle: the "ready" log line once every listener is bound, with every thread
named as smarthostd(8) says; SIGHUP reloads
configuration and certificates for new sessions while an open session keeps its own
(it still works, with its old limits); SIGTERM stops the daemon with exit status 0 and
no new connection is accepted afterwards."""

import collections
import os
import signal
import ssl

import harness
from harness import SmarthostCase, make_message


class Signals(SmarthostCase):
    def test_ready_line(self):
        # the relay thread runs, but nothing is queued: it never connects
        sh = self.start_smarthost(config={"server": {"threads": 2},
                                          "relay": {"enabled": "yes",
                                                    "relayhost": "127.0.0.1:2525"}})
        sh.wait_log(r"\bready\b")
        task = f"/proc/{sh.proc.pid}/task"
        names = collections.Counter()
        for tid in os.listdir(task):
            with open(f"{task}/{tid}/comm") as f:
                names[f.read().strip()] += 1
        self.assertEqual(names["smarthostd"], 1)  # the main thread
        for name in ("session0", "session1", "committer", "checkpointer", "relay", "control"):
            self.assertEqual(names[name], 1, f"{name} in {dict(names)}")
        self.assertGreaterEqual(names["pool"], 4)
        self.assertEqual(sum(names.values()), 7 + names["pool"], dict(names))

    def test_sighup_reloads_certificate_and_limits(self):
        sh = self.start_smarthost(config={"limits": {"max_recipients": 3}})
        old = self.session(sh)
        new_cert, new_key = harness.make_cert(sh.dir, name="renewed")
        with open(new_cert) as f:
            new_der = ssl.PEM_cert_to_DER_cert(f.read())
        with open(sh.cert) as f:
            old_der = ssl.PEM_cert_to_DER_cert(f.read())
        ctx = sh.client_context()
        ctx.load_verify_locations(new_cert)       # trust both while the reload happens

        sh.sections["tls"].update(cert_file=new_cert, key_file=new_key)
        sh.sections["limits"]["max_recipients"] = "1"
        sh.write_config()
        sh.proc.send_signal(signal.SIGHUP)

        def presented_cert():
            c = harness.Client(sh.ports["submissions"], context=ctx, implicit=True)
            der = c.sock.getpeercert(binary_form=True)
            c.quit()
            self.assertIn(der, (old_der, new_der))
            return der == new_der
        harness.wait_until(presented_cert, "the renewed certificate on new connections")

        # New sessions: new certificate (on STARTTLS too) and the new limit.
        c = self.connect(sh, context=ctx)
        c.ehlo()
        c.starttls()
        self.assertEqual(c.sock.getpeercert(binary_form=True), new_der)
        c.ehlo()
        c.expect(c.auth_plain("bob", sh.users["bob"]), 235, "2.7.0")
        c.cmd("MAIL FROM:<bob@example.test>", 250, "2.1.0")
        c.cmd("RCPT TO:<n1@example.test>", 250, "2.1.5")
        c.cmd("RCPT TO:<n2@example.test>", 452, "4.5.3")
        c.cmd("RSET", 250, "2.0.0")
        c.quit()

        # The session opened before the reload is untouched: old certificate, old limit.
        self.assertEqual(old.sock.getpeercert(binary_form=True), old_der)
        qid = old.submit("alice@example.test", ["o1@example.test", "o2@example.test",
                                                "o3@example.test"], make_message("before HUP"))
        old.quit()
        self.assertEqual(len(sh.message(qid).recipients), 3)
        sh.assert_running()

    def test_sigterm_exits_zero(self):
        sh = self.start_smarthost()
        idle = self.session(sh)
        idle.cmd("NOOP", 250, "2.0.0")
        port = sh.ports["submission"]
        self.assertEqual(sh.stop(signal.SIGTERM, expect=0), 0)
        with self.assertRaises(OSError):
            harness.Client(port, timeout=5)


if __name__ == "__main__":
    harness.main()
