"""Relay DNS (relay/dns.c through probe_dns) against a real DNS server with test zones:
MX preference order and the random order among equal preferences, implicit MX (A-only
and AAAA-only domains), address family policies, null MX, NXDOMAIN, SERVFAIL, REFUSED,
no answer at all, a domain with no usable record, a CNAME exchanger, and exchangers
without an address being skipped."""

import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from world_dns import REFUSED, SERVFAIL, TIMEOUT, DnsServer  # noqa: E402

PROBE = os.path.join(os.environ.get("SMARTHOST_PROBES", ""), "probe_dns")

ZONES = {
    "pref.test": ["MX 20 mx2.pref.test.", "MX 10 mx1.pref.test.", "MX 30 mx3.pref.test."],
    "mx1.pref.test": ["A 127.9.9.2"],
    "mx2.pref.test": ["A 127.9.9.3", "AAAA ::1"],
    "mx3.pref.test": ["AAAA ::1"],
    "equal.test": ["MX 10 a.equal.test.", "MX 10 b.equal.test."],
    "a.equal.test": ["A 127.9.9.10"],
    "b.equal.test": ["A 127.9.9.11"],
    "aonly.test": ["A 127.9.9.4"],
    "v6only.test": ["AAAA ::1"],
    "null.test": ["MX 0 ."],
    "servfail.test": SERVFAIL,
    "refused.test": REFUSED,
    "silent.test": TIMEOUT,
    "empty.test": ["TXT nothing-to-deliver-to"],
    "cname.test": ["MX 10 alias.cname.test."],
    "alias.cname.test": ["CNAME real.cname.test."],
    "real.cname.test": ["A 127.9.9.5"],
    "noaddr.test": ["MX 10 ghost.noaddr.test.", "MX 20 mx.noaddr.test."],
    "mx.noaddr.test": ["A 127.9.9.6"],
    "allghost.test": ["MX 10 ghost.allghost.test.", "MX 20 empty.test."],
    "half.test": ["MX 10 broken.half.test."],
    "broken.half.test": SERVFAIL,
}


class RelayDns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.path.exists(PROBE):
            raise unittest.SkipTest("probe_dns not built")
        cls.dns = DnsServer(ZONES)

    @classmethod
    def tearDownClass(cls):
        cls.dns.close()

    def route(self, domain, family=None, repeat=1, timeout_ms=400):
        argv = [PROBE, "--servers", self.dns.servers, "--timeout-ms", str(timeout_ms),
                "--repeat", str(repeat)]
        if family:
            argv += ["--family", family]
        r = harness.run_tool(argv + [domain])
        self.assertEqual(r.returncode, 0, r.stderr)
        routes = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(routes), repeat)
        return routes if repeat > 1 else routes[0]

    def hosts(self, route):
        return [(h["name"], h["addresses"]) for h in route["hosts"]]

    def test_preference_order_and_families(self):
        r = self.route("pref.test")
        self.assertEqual(r["status"], "ok")
        self.assertFalse(r["implicit"])
        self.assertEqual(self.hosts(r), [("mx1.pref.test", ["127.9.9.2"]),
                                         ("mx2.pref.test", ["::1", "127.9.9.3"]),
                                         ("mx3.pref.test", ["::1"])])
        r = self.route("pref.test", family="prefer-ipv4")
        self.assertEqual(self.hosts(r)[1], ("mx2.pref.test", ["127.9.9.3", "::1"]))
        r = self.route("pref.test", family="ipv4")
        self.assertEqual(self.hosts(r), [("mx1.pref.test", ["127.9.9.2"]),
                                         ("mx2.pref.test", ["127.9.9.3"])])
        r = self.route("pref.test", family="ipv6")
        self.assertEqual(self.hosts(r), [("mx2.pref.test", ["::1"]), ("mx3.pref.test", ["::1"])])

    def test_equal_preferences_are_shuffled(self):
        orders = {tuple(h["name"] for h in r["hosts"])
                  for r in self.route("equal.test", repeat=40)}
        self.assertEqual(orders, {("a.equal.test", "b.equal.test"),
                                  ("b.equal.test", "a.equal.test")})

    def test_implicit_mx(self):
        r = self.route("aonly.test")
        self.assertEqual((r["status"], r["implicit"]), ("ok", True))
        self.assertEqual(self.hosts(r), [("aonly.test", ["127.9.9.4"])])
        r = self.route("v6only.test")
        self.assertEqual(self.hosts(r), [("v6only.test", ["::1"])])
        self.assertEqual(self.route("v6only.test", family="ipv4")["status"], "nodata")

    def test_permanent_outcomes(self):
        r = self.route("null.test")
        self.assertEqual(r["status"], "nullmx")
        self.assertIn("null MX", r["detail"])
        r = self.route("nowhere.test")
        self.assertEqual(r["status"], "nxdomain")
        self.assertIn("NXDOMAIN", r["detail"])
        self.assertEqual(self.route("empty.test")["status"], "nodata")
        r = self.route("allghost.test")
        self.assertEqual(r["status"], "nodata")
        self.assertIn("no MX host", r["detail"])

    def test_temporary_outcomes(self):
        for domain in ("servfail.test", "refused.test", "silent.test", "half.test"):
            r = self.route(domain)
            self.assertEqual(r["status"], "tempfail", (domain, r))
            self.assertEqual(r["hosts"], [])
        self.assertIn("timeout", self.route("silent.test")["detail"])
        self.assertIn("broken.half.test", self.route("half.test")["detail"])

    def test_cname_exchanger_and_skipped_hosts(self):
        r = self.route("cname.test")
        self.assertEqual(self.hosts(r), [("alias.cname.test", ["127.9.9.5"])])
        r = self.route("noaddr.test")
        self.assertEqual(self.hosts(r), [("mx.noaddr.test", ["127.9.9.6"])])
        self.assertTrue(self.dns.queried("ghost.noaddr.test"))


if __name__ == "__main__":
    harness.main()
