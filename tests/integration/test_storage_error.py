"""Storage errors: while another process holds the database's write lock (BEGIN
EXCLUSIVE from Python's sqlite3) for longer than [queue] busy_timeout, the end of data is
answered 452 4.3.1 and nothing is stored; once the lock is released the same session
submits successfully. The daemon keeps running throughout."""

import sqlite3

import harness
from harness import SmarthostCase, make_message


class StorageError(SmarthostCase):
    def test_locked_database(self):
        sh = self.start_smarthost(config={"queue": {"busy_timeout": "200ms"}})
        c = self.session(sh)                     # AUTH first: it reads the same database
        c.submit("alice@example.test", ["r0@example.test"], make_message("before the lock"))
        before = {m.qid for m in sh.queue()}

        locker = sqlite3.connect(sh.db, timeout=harness.DEADLINE, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for attempt in range(2):
                r = c.mail("alice@example.test", ["r1@example.test"],
                           make_message(f"while locked {attempt}"))
                c.expect(r, 452, "4.3.1")
            c.cmd("NOOP", 250, "2.0.0")
        finally:
            locker.execute("ROLLBACK")
        self.assertEqual({m.qid for m in sh.queue()}, before, "a refused message was stored")

        data = make_message("after the release")
        qid = c.submit("alice@example.test", ["r2@example.test"], data)
        c.quit()
        stored = sh.message(qid)
        self.assertEqual(stored.recipients, ["r2@example.test"])
        self.assertTrue(stored.body.endswith(data))
        self.assertEqual(len(sh.queue()), len(before) + 1)
        sh.assert_running()

    def test_locked_database_two_sessions(self):
        """Two sessions end their data while the lock is held: both get 452 4.3.1."""
        sh = self.start_smarthost(config={"queue": {"busy_timeout": "200ms"}})
        clients = [self.session(sh, user) for user in ("alice", "bob")]
        locker = sqlite3.connect(sh.db, timeout=harness.DEADLINE, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            for c in clients:
                c.cmd("MAIL FROM:<x@example.test>", 250, "2.1.0")
                c.cmd("RCPT TO:<r@example.test>", 250, "2.1.5")
                c.cmd("DATA", 354)
            for c in clients:                    # both ends of data sent before any reply
                c.send(make_message("concurrent while locked") + b".\r\n")
            for c in clients:
                c.expect(c.reply(), 452, "4.3.1")
        finally:
            locker.execute("ROLLBACK")
        self.assertEqual(sh.queue(), [])
        for c in clients:
            c.submit("x@example.test", ["r@example.test"], make_message("retry"))
            c.quit()
        self.assertEqual(len(sh.queue()), 2)


if __name__ == "__main__":
    harness.main()
