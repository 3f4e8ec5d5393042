"""Relay core end to end: smarthostd accepts mail over STARTTLS + AUTH and its runner
delivers it by MX lookup (a real DNS server with test zones) to scripted SMTP servers on
127.x.y.z:25 — preference order and fallback, implicit MX, null MX and NXDOMAIN bounced
with an RFC 3464 DSN that arrives at the sender domain's server, SERVFAIL deferred,
greylisting delivered on retry, partial recipients, 552 at end of data, a dropped
connection, a tarpit, TLS used when offered, plaintext after a broken handshake, the
verify policy refusing a self-signed peer, `queue show` naming the step and the reply,
hold/release/delete, kill -9 during delivery followed by a restart, a backlog larger
than the runner holds in memory delivered in one go after `queue flush`, and a large
message relayed intact from its body file, which goes with delivery or deletion."""

import email
import email.policy
import json
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from world_dns import SERVFAIL, DnsServer  # noqa: E402
from world_smtp import SmtpWorld  # noqa: E402

SENDER = "scanner@sender.test"


class RelayDelivery(harness.SmarthostCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("the peers bind port 25: needs root")
        cls.tmp = tempfile.mkdtemp(prefix="smarthost-world-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.world = SmtpWorld(cls.tmp)
        cls.addClassCleanup(cls.world.close)
        w = cls.world
        cls.p_accept = w.peer("accept")
        cls.p_421 = w.peer("421")
        cls.p_sink = w.peer("accept")            # the sender domain's MX: gets the DSNs
        cls.p_grey = w.peer("greylist")
        cls.p_partial = w.peer("reject_rcpt", reject=["bad@partial.test"])
        cls.p_tls = w.peer("accept", starttls=True)
        cls.p_broken = w.peer("accept", broken_tls=True)
        cls.p_verify = w.peer("accept", starttls=True)
        cls.p_552 = w.peer("552_data")
        cls.p_drop = w.peer("drop_after_data")
        cls.p_tarpit = w.peer("tarpit")
        cls.p_hold = w.peer("hold_data")
        cls.p_nopipe = w.peer("accept", pipelining=False)
        cls.p_late = w.peer("late_reader")
        cls.dead = w.unused_addr()
        zones = {
            "sender.test": ["MX 10 mx.sender.test."],
            "mx.sender.test": [f"A {cls.p_sink.addr}"],
            "pref.test": ["MX 20 mx2.pref.test.", "MX 10 mx1.pref.test."],
            "mx1.pref.test": [f"A {cls.p_421.addr}"],
            "mx2.pref.test": [f"A {cls.p_accept.addr}"],
            "dead.test": ["MX 10 mx1.dead.test.", "MX 20 mx2.dead.test."],
            "mx1.dead.test": [f"A {cls.dead}"],
            "mx2.dead.test": [f"A {cls.p_accept.addr}"],
            "implicit.test": [f"A {cls.p_accept.addr}"],
            "nullmx.test": ["MX 0 ."],
            "servfail.test": SERVFAIL,
            "grey.test": ["MX 10 mx.grey.test."],
            "mx.grey.test": [f"A {cls.p_grey.addr}"],
            "partial.test": [f"A {cls.p_partial.addr}"],
            "tls.test": [f"A {cls.p_tls.addr}"],
            "brokentls.test": [f"A {cls.p_broken.addr}"],
            "verify.test": ["MX 10 mx.verify.test."],
            "mx.verify.test": [f"A {cls.p_verify.addr}"],
            "big.test": [f"A {cls.p_552.addr}"],
            "drop.test": [f"A {cls.p_drop.addr}"],
            "tarpit.test": [f"A {cls.p_tarpit.addr}"],
            "hold.test": [f"A {cls.p_hold.addr}"],
            "nopipe.test": [f"A {cls.p_nopipe.addr}"],
            "late.test": [f"A {cls.p_late.addr}"],
        }
        cls.dns = DnsServer(zones)
        cls.addClassCleanup(cls.dns.close)
        cls.sh = cls.start_class_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": cls.dns.servers, "dns_timeout": "1s",
            "connect_timeout": "3s", "command_timeout": "3s", "data_timeout": "3s",
            "tls_policy": "verify.test=verify", "helo_name": "relay.smarthost.test"}})

    # ---- helpers ----
    def submit(self, rcpts, subject="relay test", sender=SENDER,
               body="Hello over the relay.\r\n.leading dot line\r\n"):
        c = self.session(self.sh)
        msg = harness.make_message(subject, body=body, sender=sender, to=rcpts[0])
        qid = c.submit(sender, rcpts, msg)
        c.quit()
        c.close()
        return qid

    def show(self, qid):
        return json.loads(self.sh.ctl("queue", "show", qid, "--json").stdout)

    def wait_rcpts(self, qid, states, what):
        """Wait until every recipient's state is in states (a dict address → set)."""
        def done():
            info = self.show(qid)
            got = {r["address"]: r["state"] for r in info["recipients"]}
            return all(got.get(a) in s for a, s in states.items()) and info
        return harness.wait_until(done, what)

    def dsn_for(self, qid):
        """The DSN about qid that arrived at the sender domain's server."""
        def found():
            for m in self.p_sink.messages:
                if qid.encode() in m["data"]:
                    return m
            return None
        return harness.wait_until(found, f"a DSN about {qid} at the sender's MX")

    def parse_dsn(self, m):
        self.assertEqual(m["mail_from"], "", "a DSN goes out with the null sender")
        data = m["data"].replace(b"\r\n..", b"\r\n.")
        msg = email.message_from_bytes(data, policy=email.policy.default)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        status = parts[1]
        groups = [dict(g.items()) for g in status.get_payload()]
        return msg, parts, groups

    # ---- delivery ----
    def test_preference_order_and_fallback(self):
        qid = self.submit(["a@pref.test"])
        info = self.wait_rcpts(qid, {"a@pref.test": {"delivered"}}, "delivery via mx2")
        steps = [(a["host"], a["step"]) for a in info["attempts"]]
        self.assertEqual(steps[0], ("mx1.pref.test", "banner"), info["attempts"])
        self.assertIn("421", info["attempts"][0]["reply"])
        self.assertEqual(steps[-1], ("mx2.pref.test", "done"))
        self.assertTrue(any(m["rcpts"] == ["a@pref.test"] for m in self.p_accept.messages))
        # the body arrived intact (dot-stuffed on the wire, nothing lost)
        m = [m for m in self.p_accept.messages if m["rcpts"] == ["a@pref.test"]][0]
        self.assertIn(b"\r\n..leading dot line\r\n", m["data"])
        self.assertIsNone(harness.lone_cr_or_lf(m["data"]))

    def test_large_message_from_its_body_file(self):
        # A body this large is kept in a file beside the database, not in it: it is
        # relayed from there byte for byte (dot-stuffed), and the file goes with the
        # delivery; a deferred one keeps its file until `queue delete`.
        body = "".join(f"{'.' if i % 7 == 0 else ''}line {i} {'x' * (i % 300)}\r\n"
                       for i in range(2000))
        self.assertGreater(len(body), 128 * 1024)
        spool = self.sh.db + "-bodies"
        qid = self.submit(["big@implicit.test"], subject="large", body=body)
        self.wait_rcpts(qid, {"big@implicit.test": {"delivered"}}, "the large message delivered")
        m = [m for m in self.p_accept.messages if m["rcpts"] == ["big@implicit.test"]][0]
        self.assertIsNone(harness.lone_cr_or_lf(m["data"]))
        self.assertTrue(m["data"].replace(b"\r\n..", b"\r\n.").endswith(body.encode()))
        self.assertFalse(os.path.exists(os.path.join(spool, qid)))

        qid = self.submit(["big@servfail.test"], subject="large deferred", body=body)
        self.wait_rcpts(qid, {"big@servfail.test": {"deferred"}}, "the large message deferred")
        with open(os.path.join(spool, qid), "rb") as f:
            self.assertTrue(f.read().endswith(body.encode()))
        self.assertTrue(self.sh.message(qid).body.endswith(body.encode()))
        self.sh.ctl("queue", "delete", qid)
        self.assertFalse(os.path.exists(os.path.join(spool, qid)))

    def test_message_larger_than_the_socket_takes_at_once(self):
        # 8 MB to a server that reads nothing of it for a while: the relay's
        # writes stop short, wait for the socket, and go on where they stopped.
        line = "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n"
        body = "".join(f"{'.' if i % 5 == 0 else ''}{i:08d} {line}" for i in range(100000))
        self.assertGreater(len(body), 8 << 20)
        qid = self.submit(["slow@late.test"], subject="larger than the socket", body=body)
        self.wait_rcpts(qid, {"slow@late.test": {"delivered"}}, "the large message delivered")
        m = [m for m in self.p_late.messages if m["rcpts"] == ["slow@late.test"]][0]
        self.assertIsNone(harness.lone_cr_or_lf(m["data"]))
        self.assertTrue(m["data"].replace(b"\r\n..", b"\r\n.").endswith(body.encode()))

    def test_refused_connection_then_next_mx_and_implicit_mx(self):
        q1 = self.submit(["b@dead.test"])
        q2 = self.submit(["c@implicit.test"])
        i1 = self.wait_rcpts(q1, {"b@dead.test": {"delivered"}}, "delivery via mx2.dead.test")
        self.assertEqual(i1["attempts"][0]["step"], "connect")
        self.wait_rcpts(q2, {"c@implicit.test": {"delivered"}}, "implicit MX delivery")

    def test_null_mx_and_nxdomain_bounce_with_a_dsn(self):
        qid = self.submit(["x@nullmx.test", "y@nowhere.test"], subject="bounce me")
        info = self.wait_rcpts(qid, {"x@nullmx.test": {"bounced"}, "y@nowhere.test": {"bounced"}},
                               "null MX and NXDOMAIN bounced")
        st = {r["address"]: r["status"] for r in info["recipients"]}
        self.assertEqual(st, {"x@nullmx.test": "5.1.10", "y@nowhere.test": "5.1.2"})
        self.assertEqual({a["step"] for a in info["attempts"]}, {"dns"})
        msg, parts, groups = self.parse_dsn(self.dsn_for(qid))
        self.assertIn(SENDER, str(msg["To"]))
        rcpts = {g["Final-Recipient"]: (g["Action"], g["Status"]) for g in groups[1:]}
        self.assertEqual(rcpts, {"rfc822; x@nullmx.test": ("failed", "5.1.10"),
                                 "rfc822; y@nowhere.test": ("failed", "5.1.2")})
        self.assertIn("Subject: bounce me", parts[2].get_payload())
        self.assertNotIn("Hello over the relay", parts[2].get_payload())

    def test_servfail_is_deferred_not_bounced(self):
        qid = self.submit(["z@servfail.test"])
        info = self.wait_rcpts(qid, {"z@servfail.test": {"deferred"}}, "SERVFAIL deferred")
        self.assertEqual(info["attempts"][-1]["step"], "dns")
        self.assertEqual(info["recipients"][0]["status"], "4.4.3")
        self.assertEqual(info["state"], "deferred")
        self.assertFalse(any(qid.encode() in m["data"] for m in self.p_sink.messages))

    def test_greylisting_delivered_on_retry(self):
        qid = self.submit(["g@grey.test"])
        info = self.wait_rcpts(qid, {"g@grey.test": {"deferred"}}, "greylisted first")
        self.assertEqual(info["attempts"][0]["step"], "rcpt")
        self.assertIn("451 4.7.1", info["attempts"][0]["reply"])
        self.sh.ctl("queue", "retry", qid)
        self.wait_rcpts(qid, {"g@grey.test": {"delivered"}}, "delivered on retry")

    def test_partial_recipients(self):
        qid = self.submit(["good@partial.test", "bad@partial.test"])
        info = self.wait_rcpts(qid, {"good@partial.test": {"delivered"},
                                     "bad@partial.test": {"bounced"}}, "partial outcome")
        bad = [r for r in info["recipients"] if r["address"] == "bad@partial.test"][0]
        self.assertEqual(bad["status"], "5.1.1")
        self.assertIn("no such user", bad["last_error"])
        self.assertEqual(self.p_partial.messages[-1]["rcpts"], ["good@partial.test"])
        _, _, groups = self.parse_dsn(self.dsn_for(qid))
        self.assertEqual([g["Final-Recipient"] for g in groups[1:]], ["rfc822; bad@partial.test"])
        self.assertIn("550 5.1.1", groups[1]["Diagnostic-Code"])

    def test_552_at_end_of_data_bounces(self):
        qid = self.submit(["big@big.test"])
        info = self.wait_rcpts(qid, {"big@big.test": {"bounced"}}, "552 bounced")
        self.assertEqual(info["attempts"][-1]["step"], "data")
        self.assertIn("552 5.3.4", info["attempts"][-1]["reply"])
        self.dsn_for(qid)

    def test_dropped_connection_and_tarpit_are_deferred(self):
        q1 = self.submit(["d@drop.test"])
        q2 = self.submit(["t@tarpit.test"])
        i1 = self.wait_rcpts(q1, {"d@drop.test": {"deferred"}}, "dropped after DATA deferred")
        self.assertEqual(i1["attempts"][-1]["step"], "data")
        i2 = self.wait_rcpts(q2, {"t@tarpit.test": {"deferred"}}, "tarpit deferred")
        self.assertEqual(i2["attempts"][-1]["step"], "banner")
        self.assertIn("timeout", i2["attempts"][-1]["reply"])

    def test_tls_when_offered_and_plaintext_after_broken_handshake(self):
        q1 = self.submit(["t@tls.test"])
        q2 = self.submit(["b@brokentls.test"])
        i1 = self.wait_rcpts(q1, {"t@tls.test": {"delivered"}}, "TLS delivery")
        self.assertTrue(self.p_tls.messages[-1]["tls"])
        self.assertRegex(i1["attempts"][-1]["tls"], r"TLS1\.[23]")
        i2 = self.wait_rcpts(q2, {"b@brokentls.test": {"delivered"}}, "plaintext fallback")
        self.assertFalse(self.p_broken.messages[-1]["tls"])
        self.assertEqual(i2["attempts"][0]["step"], "starttls")

    def test_verify_policy_refuses_self_signed(self):
        qid = self.submit(["v@verify.test"])
        info = self.wait_rcpts(qid, {"v@verify.test": {"deferred"}}, "verify refused")
        a = info["attempts"][-1]
        self.assertEqual(a["step"], "starttls")
        self.assertIn("certificate", a["reply"])
        self.assertEqual(self.p_verify.messages, [])
        # and the human view says the same
        text = self.sh.ctl("queue", "show", qid).stdout
        self.assertIn("step=starttls", text)
        self.assertIn("certificate", text)

    def test_lock_step_without_pipelining(self):
        qid = self.submit(["n1@nopipe.test", "n2@nopipe.test"])
        self.wait_rcpts(qid, {"n1@nopipe.test": {"delivered"}, "n2@nopipe.test": {"delivered"}},
                        "lock-step delivery")
        self.assertEqual(self.p_nopipe.messages[-1]["rcpts"], ["n1@nopipe.test", "n2@nopipe.test"])

    def test_hold_release_delete(self):
        qid = self.submit(["s@servfail.test"])
        self.wait_rcpts(qid, {"s@servfail.test": {"deferred"}}, "deferred first")
        self.sh.ctl("queue", "hold", qid)
        listed = {e["qid"]: e for e in self.sh.queue_json()}
        self.assertEqual(listed[qid]["state"], "held")
        self.sh.ctl("queue", "release", qid)
        self.sh.ctl("queue", "delete", qid)
        self.sh.ctl("queue", "show", qid, expect=3)
        self.sh.ctl("queue", "hold", "AAAAAAAAAAAAAAA", expect=3)
        self.sh.ctl("queue", "hold", "not-a-qid", expect=2)


def one_peer_world(case, behaviour, domain):
    """One scripted peer on 127.x.y.z:25 and a DNS server pointing domain at it, both
    cleaned up with the test; skips unless root (port 25)."""
    if os.geteuid() != 0:
        case.skipTest("the peers bind port 25: needs root")
    tmp = tempfile.mkdtemp(prefix="smarthost-world-")
    case.addCleanup(shutil.rmtree, tmp, True)
    world = SmtpWorld(tmp)
    case.addCleanup(world.close)
    peer = world.peer(behaviour)
    dns = DnsServer({domain: [f"A {peer.addr}"]})
    case.addCleanup(dns.close)
    return peer, dns


class RelayCrash(harness.SmarthostCase):
    def test_kill9_during_delivery_then_restart_delivers(self):
        hold, dns = one_peer_world(self, "hold_data", "hold.test")
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": dns.servers, "command_timeout": "5s",
            "data_timeout": "30s"}})
        c = self.session(sh)
        qid = c.submit(SENDER, ["h@hold.test"], harness.make_message("crash", to="h@hold.test"))
        c.quit()
        c.close()

        harness.wait_until(hold.data_received.is_set, "the peer to have the whole message")
        sh.kill9()
        hold.release()
        rows = [m for m in harness.read_queue(sh.db) if m.qid == qid]
        self.assertEqual(rows[0].state, "queued", "nothing was recorded before the crash")
        sh.restart()
        def delivered():
            info = json.loads(sh.ctl("queue", "show", qid, "--json").stdout)
            return info["recipients"][0]["state"] == "delivered"
        harness.wait_until(delivered, "delivery after restart")
        self.assertGreaterEqual(len(hold.messages), 1)


class RelayBacklog(harness.SmarthostCase):
    def test_flushed_backlog_larger_than_memory_is_delivered_without_waiting(self):
        """An outage ends and the admin flushes: 450 deferred messages (more than the
        200 the runner holds in memory) must all go out as batches finish — not 200 now
        and the rest at the 60-second rescan, as before."""
        peer, dns = one_peer_world(self, "421", "bulk.test")
        sh = self.start_smarthost(config={"relay": {
            "enabled": "yes", "dns_servers": dns.servers, "retry_first": "1h",
            "max_per_domain": "20", "max_per_ip": "20"}})
        count = 450
        c = self.session(sh)
        for i in range(count):
            c.submit(SENDER, [f"r{i}@bulk.test"], harness.make_message(f"backlog {i}",
                                                                       to=f"r{i}@bulk.test"))
        c.quit()
        c.close()

        def all_deferred():
            rows = json.loads(sh.ctl("queue", "list", "--json").stdout)
            return len(rows) == count and all(r["last_error"] for r in rows)
        harness.wait_until(all_deferred, "every message tried once and deferred")

        peer.behaviour = "accept"
        sh.ctl("queue", "flush")
        # well under the runner's 60-second rescan: only batches finishing can explain it
        world_wait = 40
        harness.wait_until(lambda: len(peer.messages) >= count, "the whole backlog delivered",
                           timeout=world_wait)
        self.assertEqual(sorted(m["rcpts"][0] for m in peer.messages),
                         sorted(f"r{i}@bulk.test" for i in range(count)))
        # and once each: every outcome written (scans ran ahead of outcome groups
        # still gathering, and must not have taken their messages again)
        def all_done():
            rows = json.loads(sh.ctl("queue", "list", "--json").stdout)
            return all(r["state"] == "done" for r in rows)
        harness.wait_until(all_done, "every outcome recorded")
        self.assertEqual(len(peer.messages), count)


if __name__ == "__main__":
    harness.main()
