"""Relay policies end to end: the upstream relayhost (implicit TLS and required STARTTLS,
client AUTH from a credentials file, a wrong password deferring instead of bouncing),
connection reuse for messages to one destination (waiting together, or one after the
other on a parked connection, which may go stale), pacing (mail beyond the rate waits in
the queue), the delay warning, the maximum queue lifetime, and bounces to the admin
address. Time never passes in these tests: message ages are set in the database."""

import email
import email.policy
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from world_dns import DnsServer  # noqa: E402
from world_smtp import SmtpWorld  # noqa: E402

SENDER = "printer@sender.test"


class RelayPolicies(harness.SmarthostCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("the peers bind port 25: needs root")
        self.tmp = tempfile.mkdtemp(prefix="smarthost-world-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.world = SmtpWorld(self.tmp)
        self.addCleanup(self.world.close)

    def dns(self, zones):
        d = DnsServer(zones)
        self.addCleanup(d.close)
        return d

    def submit(self, sh, rcpts, subject="policy test"):
        c = self.session(sh)
        qid = c.submit(SENDER, rcpts, harness.make_message(subject, sender=SENDER, to=rcpts[0]))
        c.quit()
        return qid

    def show(self, sh, qid):
        return json.loads(sh.ctl("queue", "show", qid, "--json").stdout)

    def wait_state(self, sh, qid, state, what):
        def done():
            info = self.show(sh, qid)
            return info if all(r["state"] == state for r in info["recipients"]) else None
        return harness.wait_until(done, what)

    def age_message(self, sh, qid, seconds):
        con = sqlite3.connect(sh.db, timeout=30)
        with con:
            con.execute("UPDATE messages SET created_at = created_at - ? WHERE qid = ?",
                        (seconds, qid))
        con.close()

    # ---- relayhost ----
    def relayhost_case(self, security):
        implicit = security == "implicit"
        up = self.world.peer("accept", auth=("relayuser", "relay-Secret-9"),
                             implicit_tls=implicit, starttls=not implicit, port=2465)
        creds = os.path.join(self.tmp, "relay.secret")
        with open(creds, "w") as f:
            f.write("relayuser:relay-Secret-9\n")
        os.chmod(creds, 0o600)
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "relayhost": f"{up.addr}:2465", "relayhost_security": security,
            "relayhost_verify": "no", "relayhost_credentials": creds,
            "dns_servers": "127.0.0.1:9", "command_timeout": "5s"}})
        qid = self.submit(sh, ["anyone@far-away.example"])
        info = self.wait_state(sh, qid, "delivered", f"delivery through the relayhost ({security})")
        m = up.messages[-1]
        self.assertTrue(m["tls"] and m["auth"], m)
        self.assertEqual(m["rcpts"], ["anyone@far-away.example"])
        self.assertEqual(info["attempts"][-1]["host"], up.addr)
        self.assertRegex(info["attempts"][-1]["tls"], r"TLS1\.[23]")
        return sh, up, creds

    def test_relayhost_implicit_tls_with_auth(self):
        self.relayhost_case("implicit")

    def test_relayhost_starttls_with_auth_and_wrong_password(self):
        sh, up, creds = self.relayhost_case("starttls")
        # a wrong password is our configuration problem: deferred, never bounced
        with open(creds, "w") as f:
            f.write("relayuser:wrong\n")
        sh.stop()
        sh.start()
        qid = self.submit(sh, ["other@far-away.example"])
        info = self.wait_state(sh, qid, "deferred", "deferred after AUTH failure")
        self.assertEqual(info["attempts"][-1]["step"], "auth")
        self.assertIn("535", info["attempts"][-1]["reply"])

    def test_relayhost_auth_login_and_verified_certificate(self):
        up = self.world.peer("accept", auth=("relayuser", "relay-Secret-9"), starttls=True,
                             port=2587, auth_mechs="LOGIN")
        creds = os.path.join(self.tmp, "relay.secret")
        with open(creds, "w") as f:
            f.write("relayuser:relay-Secret-9\n")
        os.chmod(creds, 0o600)
        # the name in the relayhost setting is what the certificate is checked against
        with open("/etc/hosts") as f:
            hosts = f.read()
        self.assertNotIn("mx.world.test", hosts)
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "relayhost": f"{up.addr}:2587", "relayhost_security": "starttls",
            "relayhost_verify": "yes", "ca_file": self.world.cert,
            "relayhost_credentials": creds, "command_timeout": "5s"}})
        qid = self.submit(sh, ["someone@far-away.example"])
        # verify: an IP address is not the name in the certificate → refused, deferred
        info = self.wait_state(sh, qid, "deferred", "verification failure deferred")
        self.assertEqual(info["attempts"][-1]["step"], "starttls")
        self.assertEqual(up.messages, [])
        # without verification the same relayhost takes it over AUTH LOGIN
        sh.stop()
        sh.sections["relay"]["relayhost_verify"] = "no"
        sh.write_config()
        sh.start()
        sh.ctl("queue", "retry", qid)
        self.wait_state(sh, qid, "delivered", "AUTH LOGIN delivery")
        self.assertTrue(up.messages[-1]["auth"])
        self.assertIn("AUTH", up.sessions[-1]["commands"])

    # ---- session details ----
    def test_helo_fallback_size_and_required_tls(self):
        old = self.world.peer("accept", ehlo=False)
        small = self.world.peer("accept", size=100)
        plain = self.world.peer("accept")
        d = self.dns({"old.test": [f"A {old.addr}"], "small.test": [f"A {small.addr}"],
                      "musttls.test": [f"A {plain.addr}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": d.servers, "tls_policy": "musttls.test=require"}})
        q1 = self.submit(sh, ["a@old.test"])
        q2 = self.submit(sh, ["b@small.test"])
        q3 = self.submit(sh, ["c@musttls.test"])
        self.wait_state(sh, q1, "delivered", "delivery after HELO")
        self.assertIn("HELO", [c.split()[0] for c in old.sessions[-1]["commands"]])
        info = self.wait_state(sh, q2, "bounced", "too big for the peer's SIZE")
        self.assertIn("5.3.4", info["recipients"][0]["status"])
        self.assertNotIn("DATA", [c.split()[0] for s in small.sessions for c in s["commands"]])
        info = self.wait_state(sh, q3, "deferred", "TLS required but not offered")
        self.assertEqual(info["attempts"][-1]["step"], "starttls")
        self.assertIn("does not offer STARTTLS", info["attempts"][-1]["reply"])
        self.assertEqual(plain.messages, [])

    # ---- reuse and pacing ----
    def test_messages_to_one_destination_share_a_connection(self):
        peer = self.world.peer("accept")
        d = self.dns({"reuse.test": [f"A {peer.addr}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "no", "dns_servers": d.servers, "max_per_domain": "1"}})
        qids = [self.submit(sh, [f"r{i}@reuse.test"]) for i in range(4)]
        sh.stop()
        sh.sections["relay"]["enabled"] = "yes"
        sh.write_config()
        sh.start()  # the first scan finds all four at once
        for qid in qids:
            self.wait_state(sh, qid, "delivered", f"{qid} delivered")
        self.assertEqual(len(peer.messages), 4)
        self.assertEqual(len(peer.sessions), 1, "one connection for all four messages")
        self.assertEqual([c for c in peer.sessions[0]["commands"] if c.startswith("MAIL")],
                         [f"MAIL FROM:<{SENDER}> BODY=8BITMIME"] * 4)

    def test_a_delivered_on_connection_waits_for_the_next_message(self):
        peer = self.world.peer("accept")
        d = self.dns({"parked.test": [f"A {peer.addr}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": d.servers, "connection_cache_time": "1m"}})
        q1 = self.submit(sh, ["a@parked.test"])
        self.wait_state(sh, q1, "delivered", "the first message")
        q2 = self.submit(sh, ["b@parked.test"])
        self.wait_state(sh, q2, "delivered", "the second message, on the parked connection")
        self.assertEqual(len(peer.sessions), 1, "the second message reused the connection")
        self.assertEqual([c.split(":")[0] for c in peer.sessions[0]["commands"]
                          if c.startswith(("MAIL", "QUIT"))], ["MAIL FROM", "MAIL FROM"])
        self.assertEqual(len(self.show(sh, q2)["attempts"]), 1)
        sh.stop()  # a stopping runner says QUIT on its parked connections
        harness.wait_until(lambda: peer.sessions[0]["commands"][-1:] == ["QUIT"],
                           "QUIT on the parked connection at stop")

    def test_a_parked_connection_that_went_stale_is_not_an_attempt(self):
        peer = self.world.peer("one_per_session")
        d = self.dns({"stale.test": [f"A {peer.addr}"]})
        sh = self.start_smarthost(config={"log": {"level": "debug"}, "relay": {
            "enabled": "yes", "dns_servers": d.servers, "connection_cache_time": "1m"}})
        q1 = self.submit(sh, ["a@stale.test"])
        self.wait_state(sh, q1, "delivered", "the first message")
        q2 = self.submit(sh, ["b@stale.test"])
        info = self.wait_state(sh, q2, "delivered", "the second message, on a new connection")
        self.assertEqual(len(peer.sessions), 2)
        self.assertEqual(len(peer.messages), 2)
        self.assertEqual(len(info["attempts"]), 1, "the stale connection is not an attempt")
        sh.wait_log(rf"{q2}: parked connection to .* lost")

    def test_no_connection_cache_when_its_time_is_zero(self):
        peer = self.world.peer("accept")
        d = self.dns({"nocache.test": [f"A {peer.addr}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": d.servers, "connection_cache_time": "0"}})
        for i in range(2):
            qid = self.submit(sh, [f"r{i}@nocache.test"])
            self.wait_state(sh, qid, "delivered", f"message {i}")
        harness.wait_until(lambda: len(peer.sessions) == 2 and all(
            s["commands"][-1:] == ["QUIT"] for s in peer.sessions), "two sessions, each QUIT")

    def test_pacing_keeps_mail_queued(self):
        peer = self.world.peer("accept")
        d = self.dns({"paced.test": [f"A {peer.addr}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": d.servers, "rate_limit": "paced.test=1/h"}})
        q1 = self.submit(sh, ["a@paced.test"])
        self.wait_state(sh, q1, "delivered", "the first message")
        q2 = self.submit(sh, ["b@paced.test"])
        # the runner has looked at q2 and keeps it for the next window
        sh.wait_log(rf"{q2}: paced: paced.test is at its rate_limit")
        info = self.show(sh, q2)
        self.assertEqual(info["recipients"][0]["state"], "queued")
        self.assertEqual(info["attempts"], [])
        self.assertEqual(len(peer.messages), 1)

    def test_bounce_goes_to_the_account_owner(self):
        sink = self.world.peer("accept")
        d = self.dns({"owner.test": [f"A {sink.addr}"], "sender.test": [f"A {sink.addr}"],
                      "nullmx.test": ["MX 0 ."]})
        sh = self.start_smarthost(config={"relay": {"enabled": "yes", "dns_servers": d.servers}})
        sh.ctl("user", "set", "alice", "--owner", "it@owner.test")
        qid = self.submit(sh, ["x@nullmx.test"])
        self.wait_state(sh, qid, "bounced", "null MX bounced")
        dsn = harness.wait_until(lambda: next((m for m in sink.messages if qid.encode() in m["data"]),
                                              None), "the bounce")
        self.assertEqual(dsn["rcpts"], ["it@owner.test"], "the owner, not the device's sender")

    # ---- time in the queue ----
    def test_delay_warning_then_lifetime_bounce_to_admin(self):
        sink = self.world.peer("accept")
        d = self.dns({"sender.test": [f"A {sink.addr}"], "admin.test": [f"A {sink.addr}"],
                      "slow.test": [f"A {self.world.unused_addr()}"]})
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": d.servers, "delay_warning": "4h",
            "max_lifetime": "2d", "bounce_to": "both", "admin_address": "postmaster@admin.test",
            "connect_timeout": "2s"}})
        qid = self.submit(sh, ["x@slow.test"], subject="slow one")
        self.wait_state(sh, qid, "deferred", "first failure")
        self.assertEqual(sink.messages, [], "no warning before delay_warning")
        self.age_message(sh, qid, 5 * 3600)
        sh.ctl("queue", "retry", qid)
        def warnings():
            got = [m for m in list(sink.messages) if b"Delayed Mail" in m["data"]]
            return got if sum(len(m["rcpts"]) for m in got) == 2 else None
        warned = harness.wait_until(warnings, "a delay warning to the sender and the admin")
        # one DSN, delivered to each recipient's domain
        self.assertEqual(sorted(r for m in warned for r in m["rcpts"]),
                         ["postmaster@admin.test", SENDER])
        warn = warned[0]
        msg = email.message_from_bytes(warn["data"], policy=email.policy.default)
        groups = [dict(g.items()) for g in list(msg.iter_parts())[1].get_payload()]
        self.assertEqual(groups[1]["Action"], "delayed")
        self.assertIn("Will-Retry-Until", groups[1])
        # only once
        sh.ctl("queue", "retry", qid)
        self.wait_state(sh, qid, "deferred", "still deferred")
        self.age_message(sh, qid, 3 * 86400)
        sh.ctl("queue", "retry", qid)
        info = self.wait_state(sh, qid, "bounced", "bounced after the lifetime")
        self.assertIn("maximum queue lifetime", info["recipients"][0]["last_error"])
        self.assertEqual(info["recipients"][0]["status"][0], "5")
        harness.wait_until(lambda: any(b"Undelivered Mail" in m["data"] for m in sink.messages),
                           "the bounce")
        self.assertEqual(sum(b"Delayed Mail" in m["data"] for m in sink.messages), 2)


if __name__ == "__main__":
    harness.main()
