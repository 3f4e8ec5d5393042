"""The man pages stay true to the code: smarthost.conf(5) is exactly what
packaging/man/gen-conf-man.py makes from the key table today, every smarthostctl command
in its --help is in smarthostctl(8), and every smarthostd option in smarthostd(8)."""

import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

MAN = os.path.join(harness.REPO, "packaging", "man")


class ManPages(unittest.TestCase):
    def test_conf5_is_generated_from_the_key_table(self):
        defaults = harness.run_tool([harness.SMARTHOSTCTL, "config", "defaults"]).stdout
        gen = subprocess.run([sys.executable, os.path.join(MAN, "gen-conf-man.py")],
                             input=defaults, capture_output=True, text=True, check=True).stdout
        with open(os.path.join(MAN, "smarthost.conf.5")) as f:
            committed = f.read()
        self.assertEqual(committed, gen, "regenerate: smarthostctl config defaults | "
                         "packaging/man/gen-conf-man.py > packaging/man/smarthost.conf.5")
        keys = re.findall(r"^#(\w+) =", defaults, re.M)
        for key in keys:
            self.assertIn(f".B {key}\n", committed)

    def test_every_smarthostctl_command_is_documented(self):
        out = harness.run_tool([harness.SMARTHOSTCTL, "--help"]).stdout
        commands = re.findall(r"^  (\w+) (\w+)\b", out.split("Commands:")[1], re.M)
        self.assertGreater(len(commands), 10)
        with open(os.path.join(MAN, "smarthostctl.8")) as f:
            page = f.read().replace("\\-", "-").replace("\\fB", "").replace("\\fR", "")
        for group, name in commands:
            self.assertRegex(page, rf"(?:{group} )?\b{name}\b", f"{group} {name}")
            self.assertIn(group, page)
        for group, name in commands:
            r = harness.run_tool([harness.SMARTHOSTCTL, group, name, "--help"])
            self.assertEqual(r.returncode, 0, f"{group} {name} --help")
            self.assertIn(f"{group} {name}", r.stdout)

    def test_every_smarthostd_option_is_documented(self):
        out = harness.run_tool([harness.SMARTHOSTD, "--help"]).stdout
        with open(os.path.join(MAN, "smarthostd.8")) as f:
            page = f.read().replace("\\-", "-")
        for opt in re.findall(r"(--[a-z-]+)", out):
            self.assertIn(opt, page)


if __name__ == "__main__":
    harness.main()
