"""Configuration errors stop everything with the file, the line and the reason:
`smarthostd --check-config` prints "FILE:LINE: [section] key: reason" and exits 1 for
each kind of bad value, starting the daemon with the same file fails the same way (it
exits by itself, 1, serving nothing), and `smarthostctl config check` agrees. A good file
prints "FILE: ok" and exits 0."""

import os
import re

import harness
from harness import SMARTHOSTCTL, SMARTHOSTD, SmarthostCase, run_tool

PREAMBLE = "# a comment\n\n; another comment\n"      # shifts line numbers: 3 lines

# name -> (text after the preamble, the line the error must name, what it must name)
BAD = {
    "not_a_number": ("[limits]\nmax_recipients = lots\n", 5, "[limits] max_recipients"),
    "out_of_bounds": ("[limits]\nmax_errors = 5\nmax_line_length = 10\n", 6,
                      "[limits] max_line_length"),
    "bad_size": ("[limits]\nmax_message_size = 12Q\n", 5, "[limits] max_message_size"),
    "bad_duration": ("[auth]\nfailure_delay = soon\n", 5, "[auth] failure_delay"),
    "unknown_key": ("[server]\nthreads = 1\nfrobnicate = 1\n", 6, "[server] frobnicate"),
    "unknown_section": ("[server]\nthreads = 1\n[nosuch]\nkey = 1\n", (6, 7), "[nosuch]"),
    "not_ini": ("[server]\nthreads = 1\nthis is not ini\n", 6, ""),
    "bad_enum": ("[log]\nlevel = chatty\n", 5, "[log] level"),
    "bad_mode": ("[listener x]\naddress = 127.0.0.1:2525\nmode = bogus\n", 6, "[listener x] mode"),
    "bad_bool": ("[listener x]\naddress = 127.0.0.1:2525\nallow_plaintext_auth = maybe\n", 6,
                 "[listener x] allow_plaintext_auth"),
    "bad_address": ("[listener x]\nmode = starttls\naddress = nowhere\n", 6,
                    "[listener x] address"),
    "bad_bare_lf": ("[listener x]\naddress = 127.0.0.1:2525\nbare_lf = ignore\n", 6,
                    "[listener x] bare_lf"),
}


class CheckConfig(SmarthostCase):
    @classmethod
    def setUpClass(cls):
        cls.sh = cls.start_class_smarthost(start=False)

    def write(self, name, text):
        path = os.path.join(self.sh.dir, f"{name}.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def assert_names(self, out, path, line, what):
        lines = line if isinstance(line, tuple) else (line,)
        rx = re.escape(path) + ":(" + "|".join(map(str, lines)) + "): .*" + re.escape(what)
        self.assertRegex(out, rx, f"the error must name {path}:{line}: {what}")

    def test_bad_files(self):
        for name, (text, line, what) in BAD.items():
            with self.subTest(case=name):
                path = self.write(name, PREAMBLE + text)
                r = run_tool([SMARTHOSTD, "-c", path, "--check-config"])
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assert_names(r.stdout + r.stderr, path, line, what)
                self.assertNotIn(f"{path}: ok", r.stdout)

                r = run_tool([SMARTHOSTD, "-c", path])      # must exit by itself
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assert_names(r.stdout + r.stderr, path, line, what)

                r = run_tool([SMARTHOSTCTL, "-c", path, "config", "check"])
                self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assert_names(r.stdout + r.stderr, path, line, what)

    def test_good_file(self):
        r = run_tool([SMARTHOSTD, "-c", self.sh.conf_path, "--check-config"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(f"{self.sh.conf_path}: ok", r.stdout)
        r = run_tool([SMARTHOSTCTL, "-c", self.sh.conf_path, "config", "check"])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(f"{self.sh.conf_path}: ok", r.stdout + r.stderr)

    def test_missing_file(self):
        path = os.path.join(self.sh.dir, "does-not-exist.conf")
        r = run_tool([SMARTHOSTD, "-c", path, "--check-config"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(path, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(path))


if __name__ == "__main__":
    harness.main()
