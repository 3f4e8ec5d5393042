"""Network-trusted devices: a listener opted into trusted_networks accepts mail without
TLS or AUTH from the listed networks only, as the mapped account (its sender policy and
quotas apply exactly as for a password account), and stays closed to everyone else
(never an open relay). Networks wider than /16 or public ranges refuse to start unless
forced."""

import json
import os
import smtplib
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


class TrustedNetworks(harness.SmarthostCase):
    def test_trusted_printer_without_tls_or_auth(self):
        sh = self.start_smarthost(
            users={"printers": "printers-Secret-1"},
            listeners={"submission": {"trusted_networks": "127.0.0.2/32=printers"}})
        sh.ctl("user", "set", "printers", "--senders", "@printers.test", "--msgs-per-hour", "2")
        port = sh.ports["submission"]
        # from the trusted address: no STARTTLS, no AUTH
        c = self.connect(sh, source="127.0.0.2")
        c.ehlo()
        qid = c.submit("mfp1@printers.test", ["boss@example.test"],
                       harness.make_message("scan", sender="mfp1@printers.test"))
        m = sh.message(qid)
        self.assertEqual(m.auth_user, "printers")
        self.assertIn("(trusted network, account printers)", m.header_block.decode())
        # its policy applies: a sender outside the list is refused at end of data
        r = c.mail("someone@example.test", ["x@example.test"], harness.make_message("x"))
        self.assertEqual((r.code, r.enhanced), (553, "5.7.1"))
        c.submit("mfp2@printers.test", ["boss@example.test"], harness.make_message("scan 2"))
        r = c.mail("mfp3@printers.test", ["boss@example.test"], harness.make_message("scan 3"))
        self.assertEqual((r.code, r.enhanced), (452, "4.2.2"), "the account's quota")
        c.quit()
        # from any other address: nothing without TLS and AUTH, as before
        other = self.connect(sh, source="127.0.0.3")
        other.ehlo()
        other.cmd("MAIL FROM:<mfp1@printers.test>", 530, "5.7.0")
        with smtplib.SMTP("127.0.0.1", port, timeout=harness.IO_TIMEOUT) as s:
            code, _ = s.mail("mfp1@printers.test")
            self.assertEqual(code, 530)
        self.assertTrue(sh.wait_log(r"trusted network client=\[127\.0\.0\.2\] account=printers"))

    def test_wide_or_public_networks_refused_unless_forced(self):
        sh = self.start_smarthost(start=False, users={}, listeners={
            "submission": {"trusted_networks": "10.0.0.0/8=printers"}})
        r = harness.run_tool([harness.SMARTHOSTD, "--check-config", "-c", sh.conf_path])
        self.assertEqual(r.returncode, 1)
        self.assertIn("trusted_networks: 10.0.0.0/8 is wider than /16", r.stderr)
        sh.sections["listener submission"]["trusted_networks"] = "198.51.100.0/24=printers"
        sh.write_config()
        r = harness.run_tool([harness.SMARTHOSTD, "--check-config", "-c", sh.conf_path])
        self.assertIn("not a private range", r.stderr)
        sh.sections["listener submission"]["trusted_networks_force"] = "yes"
        sh.write_config()
        r = harness.run_tool([harness.SMARTHOSTD, "--check-config", "-c", sh.conf_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        sh.sections["listener submission"]["trusted_networks"] = "printers"
        sh.write_config()
        r = harness.run_tool([harness.SMARTHOSTD, "--check-config", "-c", sh.conf_path])
        self.assertIn("expected CIDR=ACCOUNT", r.stderr)


if __name__ == "__main__":
    harness.main()
