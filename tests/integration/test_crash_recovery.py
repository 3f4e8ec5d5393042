"""Durability: several clients submit messages concurrently, smarthostd is killed with
SIGKILL in the middle of the load and restarted on the same database. Every queue id
that was answered 250 must be in the queue with all its recipients and its full body;
no stored message may be partial (each one matches, recipients and body, a message a
client sent); the database passes an integrity check; the restarted daemon accepts mail."""

import random
import re
import sqlite3
import ssl
import threading

import harness
from harness import DialogueError, SmarthostCase, make_message

WORKERS = 4
ACKED_BEFORE_KILL = 60


class CrashRecovery(SmarthostCase):
    def test_kill9_under_load(self):
        sh = self.start_smarthost(config={"limits": {"max_message_size": "1M"}})
        lock = threading.Lock()
        sent = {}        # token -> (recipients, client data)
        acked = {}       # qid -> token
        killed = threading.Event()
        errors = []

        def worker(n):
            rng = random.Random(n)
            c = None
            try:
                c = sh.session("alice" if n % 2 == 0 else "bob")
                for i in range(100000):
                    token = f"w{n}m{i}"
                    rcpts = [f"{token}-r{j}@example.test" for j in range(1 + rng.randrange(3))]
                    data = make_message(f"load {token}",
                                        body=f"{token} {'z' * 60}\r\n" * rng.randrange(1, 600))
                    with lock:
                        sent[token] = (rcpts, data)
                    qid = c.submit("load@example.test", rcpts, data)
                    with lock:
                        acked[qid] = token
            except (DialogueError, OSError, ssl.SSLError) as e:
                if not killed.is_set():
                    errors.append(f"worker {n} failed before the kill: {e}")
            finally:
                if c is not None:
                    c.close()

        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
        for t in threads:
            t.start()
        harness.wait_until(lambda: len(acked) >= ACKED_BEFORE_KILL or errors or
                           not any(t.is_alive() for t in threads),
                           f"{ACKED_BEFORE_KILL} acknowledged messages")
        self.assertEqual(errors, [])
        killed.set()
        sh.kill9()
        for t in threads:
            t.join(harness.DEADLINE)
            self.assertFalse(t.is_alive(), "a client thread hangs after the kill")
        self.assertEqual(errors, [])
        with lock:
            acked_now, sent_now = dict(acked), dict(sent)

        sh.restart()
        stored = {m.qid: m for m in sh.queue()}
        for qid, token in acked_now.items():
            rcpts, data = sent_now[token]
            self.assertIn(qid, stored, f"acknowledged message {qid} ({token}) lost")
            m = stored[qid]
            self.assertEqual(m.recipients, rcpts, f"{qid}: recipients")
            self.assertTrue(m.body.endswith(data), f"{qid}: body incomplete: {len(m.body)} bytes")
        for qid, m in stored.items():
            match = re.search(rb"\r\nSubject: load (\S+)\r\n", m.body)
            self.assertIsNotNone(match, f"{qid}: stored message without its headers: {m!r}")
            token = match.group(1).decode()
            self.assertIn(token, sent_now, f"{qid}: unknown message {token}")
            rcpts, data = sent_now[token]
            self.assertEqual(m.recipients, rcpts, f"{qid} ({token}): partial recipients")
            self.assertTrue(m.body.endswith(data), f"{qid} ({token}): partial body")
            self.assertEqual(m.sender, "load@example.test")
        self.assertGreaterEqual(len(stored), len(acked_now))

        con = sqlite3.connect(f"file:{sh.db}?mode=ro", uri=True, timeout=harness.DEADLINE)
        try:
            self.assertEqual(con.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            orphans = con.execute("SELECT count(*) FROM recipients WHERE message_id NOT IN"
                                  " (SELECT id FROM messages)").fetchone()[0]
            self.assertEqual(orphans, 0, "recipients without a message")
        finally:
            con.close()

        listed = {e["qid"]: e for e in sh.queue_json()}
        for qid, token in acked_now.items():
            self.assertIn(qid, listed, f"smarthostctl queue list misses {qid}")
            self.assertEqual(listed[qid]["recipients"], len(sent_now[token][0]))

        c = self.session(sh)
        qid = c.submit("after@example.test", ["r@example.test"], make_message("after restart"))
        c.quit()
        self.assertEqual(sh.message(qid).sender, "after@example.test")


if __name__ == "__main__":
    harness.main()
